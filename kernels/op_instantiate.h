// The explicit instantiations of the op templates of kernels/op_signatures.inc, one macro per
// family of ops (a family is what one kernels/cuda/*.cu file defines). The dispatcher
// (kernels/dispatch.cpp, in moetron::kernels) and the CUDA backend (each .cu file, in
// moetron::kernels::gpu) expand the same macros, so the two lists of signatures cannot drift
// from each other: a mismatch with the declarations is a compile error, a missing one a link
// error. T is the element type (float; double for the gradient checks); adamw's M is the moment
// type (float, or uint16_t for bf16 moments). Expand inside the namespace that defines the ops.
#pragma once

#define MOETRON_OPS_GEMM(T)                                                                        \
  template void gemm<T>(const Exec&, bool, bool, int64_t, int64_t, int64_t, T, const T*, const T*, \
                        T, T*, GemmPrecision, bool);

#define MOETRON_OPS_GROUPED_GEMM(T)                                                           \
  template void grouped_gemm<T>(const Exec&, const int64_t*, int64_t, bool, int64_t, int64_t, \
                                const T*, const T*, T*, GemmPrecision);                       \
  template void grouped_gemm_wgrad<T>(const Exec&, const int64_t*, int64_t, int64_t, int64_t, \
                                      const T*, const T*, T*, GemmPrecision);

#define MOETRON_OPS_ELEMENTWISE(T)                                  \
  template void add_inplace<T>(const Exec&, T*, const T*, int64_t); \
  template void axpy<T>(const Exec&, T*, T, const T*, int64_t);

#define MOETRON_OPS_LAYOUT(T)                                                                      \
  template void copy_2d<T>(const Exec&, const T*, int64_t, T*, int64_t, int64_t, int64_t, int64_t, \
                           bool);                                                                  \
  template void sum_row_groups<T>(const Exec&, const T*, int64_t, T*, int64_t, int64_t, int64_t,   \
                                  int64_t);

#define MOETRON_OPS_EMBEDDING(T)                                                                   \
  template void embedding_forward<T>(const Exec&, const int32_t*, int64_t, const T*, int64_t, T*); \
  template void embedding_backward<T>(const Exec&, const int32_t*, int64_t, const T*, int64_t, T*);

#define MOETRON_OPS_NORM(T)                                                                       \
  template void rmsnorm_forward<T>(const Exec&, const T*, const T*, int64_t, int64_t, T, T*, T*); \
  template void rmsnorm_backward_input<T>(const Exec&, const T*, const T*, const T*, const T*,    \
                                          int64_t, int64_t, T*);                                  \
  template void rmsnorm_backward_weight<T>(const Exec&, const T*, const T*, const T*, int64_t,    \
                                           int64_t, T*);

#define MOETRON_OPS_ROPE(T)                                                               \
  template void rope_apply<T>(const Exec&, T*, int64_t, int64_t, int64_t, const int32_t*, \
                              const double*, int64_t, bool);

#define MOETRON_OPS_ATTENTION(T)                                                                  \
  template void attention_forward<T>(const Exec&, const T*, const T*, const T*, int64_t, int64_t, \
                                     int64_t, int64_t, int64_t, T, T*, T*, GemmPrecision);        \
  template void attention_backward<T>(const Exec&, const T*, const T*, const T*, const T*,        \
                                      const T*, const T*, int64_t, int64_t, int64_t, int64_t,     \
                                      int64_t, T, T*, T*, T*, GemmPrecision);

#define MOETRON_OPS_LATENT_ATTENTION(T)                                                        \
  template void latent_attention_forward<T>(const Exec&, const T*, const T*, int64_t, int64_t, \
                                            int64_t, int64_t, int64_t, T, T*);

#define MOETRON_OPS_SWIGLU(T)                                                                   \
  template void swiglu_forward<T>(const Exec&, const T*, int64_t, int64_t, const T*, T*);       \
  template void swiglu_backward<T>(const Exec&, const T*, const T*, int64_t, int64_t, const T*, \
                                   T*, T*);

#define MOETRON_OPS_GATE(T)                                                                      \
  template void gate_forward<T>(const Exec&, const T*, const T*, int64_t, const GateParams&, T*, \
                                int32_t*, T*);                                                   \
  template void gate_backward<T>(const Exec&, const T*, const T*, const int32_t*, const T*,      \
                                 int64_t, const GateParams&, T*);

#define MOETRON_OPS_BALANCE(T)                                                                  \
  template void seq_balance_loss_forward<T>(const Exec&, const T*, int64_t, int64_t, int64_t,   \
                                            int64_t, int64_t, double, T*, double*);             \
  template void seq_balance_loss_backward<T>(const Exec&, const T*, const T*, int64_t, int64_t, \
                                             int64_t, int64_t, double, T*);                     \
  template void bias_sign_update<T>(const Exec&, T*, const int64_t*, int64_t, double);

#define MOETRON_OPS_PERMUTE(T)                                                                     \
  template void gather_rows<T>(const Exec&, const T*, const int64_t*, int64_t, int64_t, T*);       \
  template void unpermute_add<T>(const Exec&, const T*, const int64_t*, int64_t, int64_t, int64_t, \
                                 T*);

#define MOETRON_OPS_CROSS_ENTROPY(T)                                                              \
  template void lm_head_ce_forward<T>(const Exec&, const T*, const T*, const int32_t*, int64_t,   \
                                      int64_t, int64_t, int64_t, T*, GemmPrecision, double*,      \
                                      const uint16_t*);                                           \
  template void lm_head_ce_backward<T>(const Exec&, const T*, const T*, const int32_t*, const T*, \
                                       T, int64_t, int64_t, int64_t, int64_t, T*, T*,             \
                                       GemmPrecision, const uint16_t*);

#define MOETRON_OPS_EP_WIRE(T)                                                                    \
  template void ep_encode_rows<T>(const Exec&, RowEncoding, const T*, const int64_t*, int64_t,    \
                                  int64_t, uint8_t*, int64_t);                                    \
  template void ep_decode_rows<T>(const Exec&, RowEncoding, const uint8_t*, int64_t, int64_t,     \
                                  int64_t, T*);                                                   \
  template void ep_decode_add_rows<T>(const Exec&, RowEncoding, const uint8_t*, int64_t,          \
                                      const int64_t*, int64_t, int64_t, int64_t, T*);             \
  template void ep_pack_routes<T>(const Exec&, const int32_t*, const T*, const int64_t*, int64_t, \
                                  int64_t, int64_t, int64_t, uint8_t*, int64_t);                  \
  template void ep_unpack_routes<T>(const Exec&, const uint8_t*, int64_t, int64_t, int64_t,       \
                                    int32_t*, T*);

#define MOETRON_OPS_ADAMW(M)                                                           \
  template void adamw_update<M>(const Exec&, float*, const float*, M*, M*, int64_t,    \
                                const AdamWParams&);                                   \
  template void adamw_update_segments<M>(const Exec&, const AdamWSegment<M>*, int64_t, \
                                         const AdamWParams&);

// Every family at element type T (adamw, whose template parameter is the moment type, apart).
#define MOETRON_OPS_ALL(T)        \
  MOETRON_OPS_GEMM(T)             \
  MOETRON_OPS_GROUPED_GEMM(T)     \
  MOETRON_OPS_ELEMENTWISE(T)      \
  MOETRON_OPS_LAYOUT(T)           \
  MOETRON_OPS_EMBEDDING(T)        \
  MOETRON_OPS_NORM(T)             \
  MOETRON_OPS_ROPE(T)             \
  MOETRON_OPS_ATTENTION(T)        \
  MOETRON_OPS_LATENT_ATTENTION(T) \
  MOETRON_OPS_SWIGLU(T)           \
  MOETRON_OPS_GATE(T)             \
  MOETRON_OPS_BALANCE(T)          \
  MOETRON_OPS_PERMUTE(T)          \
  MOETRON_OPS_CROSS_ENTROPY(T)    \
  MOETRON_OPS_EP_WIRE(T)
