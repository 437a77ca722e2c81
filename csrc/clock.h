// The clock of the stopwatch and the timer sections: std::chrono::steady_clock in int64
// nanoseconds. Monotonic wall time, which keeps counting while a GPU works (process CPU time
// would not); on Linux it is CLOCK_MONOTONIC, the clock of Python's time.perf_counter_ns.
#pragma once

#include <chrono>
#include <cstdint>

namespace fastpgd {

inline std::int64_t steady_now_ns() noexcept {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace fastpgd
