// `moetron plan`'s output: a readable table (default) or JSON (--json) with the same figures
// under self-explaining keys — params_total, params_activated, params_mtp, params_mtp_activated,
// params_per_rank and bytes_per_rank (the rank with the most bytes, with a breakdown object by
// term), ranks (every pipeline rank the same way), memory_bytes, fits (null when the memory is
// unknown), over_bytes, notes. Sizes in the JSON are bytes; the table prints GiB (MiB for a plan
// under 1 GiB) and parameters in B/M/K.
#pragma once

#include <ostream>

#include "trainer/plan.h"

namespace moetron {

void write_plan_table(const Plan& p, std::ostream& out);
void write_plan_json(const Plan& p, std::ostream& out);

}  // namespace moetron
