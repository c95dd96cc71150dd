// The CUDA emulator's cub::DeviceRadixSort::SortPairs (tests/cuda_emu/device.h), for the one use
// the backend has (kernels/cuda/embedding.cu): a stable sort of (key, value) pairs by the key's
// bits [begin_bit, end_bit) as CUB orders them (signed keys: negative before positive), on the
// emulated device memory, enqueued on the stream as CUB's kernels are. The scratch CUB asks for is
// one byte here, taken and checked like CUB's.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <numeric>
#include <type_traits>
#include <vector>

namespace cuda_emu {
void enqueue(cudaStream_t s, std::function<void()> work);  // tests/cuda_emu/streams.h
}

namespace cub {
struct DeviceRadixSort {
  template <class K, class V, class N>
  static cudaError_t SortPairs(void* temp, size_t& temp_bytes, const K* keys_in, K* keys_out,
                               const V* values_in, V* values_out, N n, int begin_bit = 0,
                               int end_bit = sizeof(K) * 8, cudaStream_t stream = nullptr) {
    static_assert(std::is_integral_v<K>, "the emulator sorts integer keys");
    if (temp == nullptr) {
      temp_bytes = 1;
      return cudaSuccess;
    }
    if (temp_bytes < 1 || n < 0 || begin_bit < 0 || end_bit > int(sizeof(K) * 8) ||
        begin_bit >= end_bit)
      return cudaErrorInvalidValue;
    cuda_emu::enqueue(stream, [=] {
      using U = std::make_unsigned_t<K>;
      const auto bits = [&](K k) {
        U u = static_cast<U>(k);
        if constexpr (std::is_signed_v<K>) u ^= U(1) << (sizeof(K) * 8 - 1);  // CUB's key twiddle
        const int width = end_bit - begin_bit;
        const U field = width == int(sizeof(U) * 8) ? ~U(0) : static_cast<U>((U(1) << width) - 1);
        return static_cast<U>(u >> begin_bit & field);
      };
      std::vector<size_t> order(static_cast<size_t>(n));
      std::iota(order.begin(), order.end(), size_t(0));
      std::stable_sort(order.begin(), order.end(),
                       [&](size_t a, size_t b) { return bits(keys_in[a]) < bits(keys_in[b]); });
      std::vector<K> k(static_cast<size_t>(n));
      std::vector<V> v(static_cast<size_t>(n));
      for (size_t i = 0; i < order.size(); ++i)
        k[i] = keys_in[order[i]], v[i] = values_in[order[i]];
      std::copy(k.begin(), k.end(), keys_out);
      std::copy(v.begin(), v.end(), values_out);
    });
    return cudaSuccess;
  }
};
}  // namespace cub
