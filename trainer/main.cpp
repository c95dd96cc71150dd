// The `moetron` command line.
//
//   moetron train CONFIG [--set key=value ...] [--resume auto|DIR]  train from a YAML config
//   moetron plan CONFIG [--set ...] [--world N] [--hardware FILE] [--json] [--ep-imbalance R]
//                                                     parameters and memory per device of a
//                                                     layout, without allocating (trainer/plan.h)
//   moetron estimate CONFIG --hardware FILE [--set ...] [--world N] [--json] [--trace FILE]
//                   [--calibrate TOKENS_PER_S_PER_GPU] [--ep-imbalance R]
//                                                     step time, tokens/s/GPU, MFU, GPU-hours of
//                                                     a layout on a device (trainer/estimate.h)
//   moetron probe                                     this CPU's GEMM peaks and memory bandwidth
//                                                     as a hardware profile (trainer/probe.h)
//   moetron prepare-text --out FILE.h5 INPUT ...        text files/dirs -> byte-level token file
//   moetron dump-grads CONFIG --out FILE.h5 [--from CHECKPOINT_DIR] [--set ...]
//                                                     one step's loss and gradients (parity)
//   moetron export CHECKPOINT OUTDIR [--dtype bf16|fp32] Hugging Face safetensors + config.json
//   moetron generate CHECKPOINT_OR_RUN_DIR --prompt TEXT [...]  text from a checkpoint
//                                                     (trainer/generate.h)
//   moetron tokenize train|encode|decode|ids|info ...   byte-level BPE (trainer/tokenize.h)
//
// Errors print one message "moetron: error: ..." naming the file or key (each of its lines with the
// prefix), and exit 1 (2 for usage).
#include <hdf5.h>
#include <malloc.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "data/byte_tokenizer.h"
#include "data/token_file.h"
#include "parallel/comm.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/dump.h"
#include "trainer/estimate.h"
#include "trainer/estimate_report.h"
#include "trainer/export.h"
#include "trainer/generate.h"
#include "trainer/plan.h"
#include "trainer/plan_report.h"
#include "trainer/probe.h"
#include "trainer/tokenize.h"
#include "trainer/train.h"

namespace {

const std::string kUsage =
    std::string(
        "usage:\n"
        "  moetron train CONFIG [--set key=value ...] [--resume auto|CHECKPOINT_DIR]\n"
        "  moetron plan CONFIG [--set key=value ...] [--world N] [--hardware FILE] [--json]\n"
        "                   [--ep-imbalance R]\n"
        "  moetron estimate CONFIG --hardware FILE [--set key=value ...] [--world N] [--json]\n"
        "                   [--trace FILE]\n"
        "                   [--calibrate TOKENS_PER_S_PER_GPU] [--ep-imbalance R]\n"
        "  moetron probe\n"
        "  moetron prepare-text --out FILE.h5 INPUT...\n"
        "  moetron dump-grads CONFIG --out FILE.h5 [--from CHECKPOINT_DIR] [--set key=value ...]\n"
        "  moetron export CHECKPOINT_DIR OUT_DIR [--dtype bf16|fp32]\n") +
    moetron::kGenerateUsage + moetron::kTokenizeUsage;

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Args {
  std::vector<std::string> positional, sets;
  std::string out, resume, from, dtype = "bf16", world, hardware, calibrate, trace, ep_imbalance;
  bool json = false;
};

Args parse(int argc, char** argv, int first) {
  Args a;
  for (int i = first; i < argc; ++i) {
    std::string s = argv[i];
    if (s == "--set" || s == "--out" || s == "--resume" || s == "--from" || s == "--dtype" ||
        s == "--world" || s == "--hardware" || s == "--calibrate" || s == "--trace" ||
        s == "--ep-imbalance") {
      if (i + 1 >= argc) throw UsageError(s + " needs a value");
      if (s == "--set")
        a.sets.push_back(argv[++i]);
      else
        (s == "--out"            ? a.out
         : s == "--resume"       ? a.resume
         : s == "--from"         ? a.from
         : s == "--world"        ? a.world
         : s == "--hardware"     ? a.hardware
         : s == "--calibrate"    ? a.calibrate
         : s == "--trace"        ? a.trace
         : s == "--ep-imbalance" ? a.ep_imbalance
                                 : a.dtype) = argv[++i];
    } else if (s == "--json") {
      a.json = true;
    } else if (s.rfind("--set=", 0) == 0) {
      a.sets.push_back(s.substr(6));
    } else if (s.rfind("--", 0) == 0) {
      throw UsageError("unknown option " + s);
    } else {
      a.positional.push_back(s);
    }
  }
  return a;
}

// The job's size and this process's rank, from mpirun's environment (1 and 0 without it).
int world_size() {
  const char* s = std::getenv("OMPI_COMM_WORLD_SIZE");
  return s ? std::atoi(s) : 1;
}

int world_rank() {
  const char* s = std::getenv("OMPI_COMM_WORLD_RANK");
  return s ? std::atoi(s) : 0;
}

// --world's value (0 when not given).
int world_option(const Args& a) {
  int world = 0;
  if (!a.world.empty()) {
    size_t used = 0;
    try {
      world = std::stoi(a.world, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != a.world.size() || world < 1)
      throw UsageError("--world needs a positive number of ranks, got '" + a.world + "'");
  }
  return world;
}

// --ep-imbalance R (default 1): the busiest EP rank's expert rows over the mean.
double ep_imbalance_option(const Args& a) {
  if (a.ep_imbalance.empty()) return 1;
  char* end = nullptr;
  const double r = std::strtod(a.ep_imbalance.c_str(), &end);
  if (end == a.ep_imbalance.c_str() || *end || !(r >= 1))
    throw UsageError("--ep-imbalance needs the busiest EP rank's rows over the mean, >= 1, got '" +
                     a.ep_imbalance + "'");
  return r;
}

// `moetron plan`: the table or JSON on stdout; a layout that does not fit is then refused like
// `train` refuses it (exit 1).
int plan(Args& a) {
  if (a.positional.size() != 1) throw UsageError("plan takes exactly one CONFIG");
  const int world = world_option(a);
  if (!a.hardware.empty()) a.sets.push_back("hardware.profile=" + a.hardware);
  const moetron::Plan p = moetron::make_plan(moetron::load_config(a.positional[0], a.sets), world,
                                             ep_imbalance_option(a));
  if (a.json)
    moetron::write_plan_json(p, std::cout);
  else
    moetron::write_plan_table(p, std::cout);
  std::cout.flush();
  const std::string why = moetron::plan_refusal(p);
  if (!why.empty()) throw moetron::ConfigError(why);
  return 0;
}

// `moetron estimate`: the table or JSON on stdout, then a layout that does not fit in memory is
// refused as `plan` refuses it. --calibrate prints the GEMM efficiency that reaches the rate.
int estimate(Args& a) {
  if (a.positional.size() != 1) throw UsageError("estimate takes exactly one CONFIG");
  if (a.hardware.empty()) throw UsageError("estimate needs --hardware FILE (a hardware profile)");
  const int world = world_option(a);
  a.sets.push_back("hardware.profile=" + a.hardware);
  moetron::Config cfg = moetron::load_config(a.positional[0], a.sets);
  moetron::EstimateOptions o;
  o.ep_imbalance = ep_imbalance_option(a);
  if (!a.calibrate.empty()) {
    char* end = nullptr;
    const double rate = std::strtod(a.calibrate.c_str(), &end);
    if (end == a.calibrate.c_str() || *end || !(rate > 0))
      throw UsageError("--calibrate needs tokens/s per GPU > 0, got '" + a.calibrate + "'");
    const moetron::GemmEfficiency eff = moetron::calibrate_gemm_efficiency(cfg, rate, world, o);
    cfg.hardware.gemm_efficiency = eff.bf16, cfg.hardware.gemm_efficiency_fp8 = eff.fp8;
    std::cout << "calibrated: gemm_efficiency: " << eff.bf16 << ", gemm_efficiency_fp8: " << eff.fp8
              << " (reach " << rate << " tokens/s/GPU)\n";
  }
  const moetron::Estimate e = moetron::make_estimate(cfg, world, o);
  if (a.json)
    moetron::write_estimate_json(e, std::cout);
  else
    moetron::write_estimate_table(e, std::cout);
  std::cout.flush();
  if (!a.trace.empty()) moetron::write_estimate_trace(e, a.trace);  // the predicted timeline
  const std::string why = moetron::plan_refusal(e.plan);
  if (!why.empty()) throw moetron::ConfigError(why);
  return 0;
}

int run(int argc, char** argv) {
  if (argc < 2) throw UsageError("missing command");
  const std::string cmd = argv[1];
  if (cmd == "-h" || cmd == "--help" || cmd == "help") {
    std::cout << kUsage;
    return 0;
  }
  if (cmd == "tokenize") {
    try {
      return moetron::tokenize_command(std::vector<std::string>(argv + 2, argv + argc), std::cout);
    } catch (const moetron::TokenizeUsageError& e) {
      throw UsageError(e.what());
    }
  }
  if (cmd == "generate") {
    try {
      return moetron::generate_command(std::vector<std::string>(argv + 2, argv + argc), std::cout,
                                       std::cerr);
    } catch (const moetron::GenerateUsageError& e) {
      throw UsageError(e.what());
    }
  }
  Args a = parse(argc, argv, 2);
  if (cmd == "train") {
    if (a.positional.size() != 1) throw UsageError("train takes exactly one CONFIG");
    moetron::Config cfg = moetron::load_config(a.positional[0], a.sets);
    // "auto" is resolved before anything is written: checkpoints that are all unusable stop the
    // run here, with run.dir untouched
    std::string notes;
    const std::string resume = moetron::resolve_resume(a.resume, cfg.run.dir, &notes);
    if (world_rank() == 0) std::cout << notes << std::flush;
    moetron::train(cfg, std::cout, resume);
    return 0;
  }
  if (cmd == "plan") return plan(a);
  if (cmd == "estimate") return estimate(a);
  if (cmd == "probe") {
    moetron::write_probe_profile(moetron::probe_machine(), std::cout);
    return 0;
  }
  if (cmd == "prepare-text") {
    if (a.out.empty() || a.positional.empty())
      throw UsageError("prepare-text needs --out and inputs");
    auto info = moetron::data::text_to_token_file(a.positional, a.out);
    std::cout << a.out << ": " << info.n_docs << " documents, " << info.n_tokens << " tokens\n";
    return 0;
  }
  if (cmd == "export") {
    if (a.positional.size() != 2) throw UsageError("export takes CHECKPOINT_DIR OUT_DIR");
    moetron::export_checkpoint(a.positional[0], a.positional[1], a.dtype);
    std::cout << a.positional[1] << ": safetensors (" << a.dtype << "), index, config.json\n";
    return 0;
  }
  if (cmd == "dump-grads") {
    if (a.positional.size() != 1 || a.out.empty())
      throw UsageError("dump-grads takes one CONFIG and --out");
    moetron::dump_grads(moetron::load_config(a.positional[0], a.sets), a.out, a.from);
    return 0;
  }
  throw UsageError("unknown command '" + cmd + "'");
}

// Input errors are found identically by every rank before any communication: each rank prints
// the message (with its rank when there are several), waits until every rank has printed (so
// mpirun's abort on the first non-zero exit cuts no message off), and exits 1.
int fail(const std::string& msg) {
  std::string prefix = "moetron: error: ";
  if (world_size() > 1) {
    const char* r = std::getenv("OMPI_COMM_WORLD_RANK");
    prefix = "moetron: error: rank " + std::string(r ? r : "?") + ": ";
  }
  // every line of a message of several lines carries the prefix
  const std::string line = moetron::prefix_lines(prefix, msg);
  std::fputs(line.c_str(), stderr);  // one write: ranks' lines do not interleave
  std::fflush(stderr);
  if (world_size() > 1) moetron::world().barrier();
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  // Activation buffers of a few MB come and go every layer; keep freed memory in the heap
  // instead of returning it to the kernel (mmap/munmap) so the next step reuses it without page
  // faults. (Measured: ~15% of a tiny-model step was page-fault handling without this.)
  mallopt(M_MMAP_THRESHOLD, 1 << 30);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  // oneDNN's VTune task annotations cost ~1.5% of a tiny-model step; off unless asked for
  setenv("DNNL_ITT_TASK_LEVEL", "0", /*overwrite=*/0);
  // Every HDF5 file is closed by its owner. HDF5's own at-exit clean-up would retry the close of
  // a file whose close failed (a checkpoint on a full disk) and crash inside the library.
  H5dont_atexit();
  try {
    return run(argc, argv);
  } catch (const UsageError& e) {
    std::cerr << "moetron: " << e.what() << "\n" << kUsage;
    return 2;
  } catch (const moetron::ConfigError& e) {
    return fail(e.what());
  } catch (const moetron::data::DataError& e) {
    return fail(e.what());
  } catch (const moetron::CheckpointError& e) {
    return fail(e.what());
  } catch (const moetron::TrainingHalted& e) {
    return fail(e.what());
  } catch (const std::exception& e) {
    // not a deterministic input error: other ranks may be waiting in a collective
    if (world_size() > 1) moetron::abort_all(e.what());
    return fail(e.what());
  }
}
