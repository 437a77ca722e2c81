// The lap stopwatch as a pure state machine with its lap storage: every method takes the
// current time in nanoseconds, so the core has no clock and no Python inside. The binding reads
// the clock (steady_now_ns() of clock.h, or a user callable) and passes the reading in; tests
// drive it with any sequence of times they like.
//
// States: never started, running, stopped.
//   start(now): never started -> running (first lap begins); stopped -> running (the current
//               lap resumes); running -> no change.
//   stop(now):  running -> stopped, adding (now - mark) to the current lap's running total;
//               otherwise no change.
//   lap(now):   running -> records (running total + now - mark) as one lap, resets the
//               total, mark = now; otherwise no change and no lap.
// "mark" is the time of the last start() or lap().
//
// A clock that goes backwards must not produce negative laps: each segment (now - mark) is
// clamped to 0. Sums saturate at INT64_MAX (about 292 years) instead of overflowing.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

namespace fastpgd {

class LapStopwatch {
 public:
  enum class State : std::uint8_t { kNeverStarted, kRunning, kStopped };

  // The outcome of a call, so that callers (strict mode) can say what went wrong.
  enum class Result : std::uint8_t { kOk, kAlreadyRunning, kNotStarted, kStopped };

  // The calls that can be misused, for misuse_message().
  enum class Call : std::uint8_t { kStart, kStop, kLap };

  static constexpr std::int64_t kMaxNs = std::numeric_limits<std::int64_t>::max();

  State state() const noexcept { return state_; }
  bool running() const noexcept { return state_ == State::kRunning; }

  Result start(std::int64_t now) noexcept {
    if (state_ == State::kRunning) return Result::kAlreadyRunning;
    // From never-started the running total is already 0; from stopped it is kept (resume).
    state_ = State::kRunning;
    mark_ = now;
    return Result::kOk;
  }

  Result stop(std::int64_t now) noexcept {
    if (state_ != State::kRunning) return not_running();
    accum_ = add_sat(accum_, segment(now));
    state_ = State::kStopped;
    return Result::kOk;
  }

  // On success stores the lap in *lap_ns. Throws std::bad_alloc only when the lap vector
  // cannot grow; the state is then unchanged.
  Result lap(std::int64_t now, std::int64_t* lap_ns) {
    if (state_ != State::kRunning) return not_running();
    const std::int64_t ns = add_sat(accum_, segment(now));
    laps_.push_back(ns);  // first, so that a failed allocation leaves the state as it was
    accum_ = 0;
    mark_ = now;
    *lap_ns = ns;
    return Result::kOk;
  }

  // The current, unfinished lap so far: running total, plus (now - mark) while running.
  std::int64_t elapsed(std::int64_t now) const noexcept {
    return state_ == State::kRunning ? add_sat(accum_, segment(now)) : accum_;
  }

  void reset() noexcept {
    state_ = State::kNeverStarted;
    mark_ = 0;
    accum_ = 0;
    std::vector<std::int64_t>().swap(laps_);  // give the memory back, as a new stopwatch
  }

  const std::vector<std::int64_t>& laps() const noexcept { return laps_; }
  std::size_t size() const noexcept { return laps_.size(); }
  // Bytes held for laps, including the vector's spare capacity (<= 16 per lap with doubling).
  std::size_t capacity_bytes() const noexcept { return laps_.capacity() * sizeof(std::int64_t); }

  std::int64_t total() const noexcept {
    std::int64_t sum = 0;
    for (std::int64_t ns : laps_) sum = add_sat(sum, ns);
    return sum;
  }

  static double to_seconds(std::int64_t ns) noexcept { return static_cast<double>(ns) / 1e9; }

  static const char* state_name(State state) noexcept {
    switch (state) {
      case State::kRunning: return "running";
      case State::kStopped: return "stopped";
      case State::kNeverStarted: break;
    }
    return "never started";
  }

  // What strict mode says when `call` returned `r` (not kOk): what went wrong and what to call
  // instead.
  static const char* misuse_message(Call call, Result r) noexcept {
    if (r == Result::kAlreadyRunning) {
      return "start() called while already running; call stop() first, or lap() to record a lap";
    }
    if (call == Call::kStop) {
      return r == Result::kNotStarted ? "stop() called before start(); call start() first"
                                      : "stop() called while stopped; call start() first";
    }
    return r == Result::kNotStarted ? "lap() called before start(); call start() first"
                                    : "lap() called while stopped; call start() first";
  }

 private:
  Result not_running() const noexcept {
    return state_ == State::kNeverStarted ? Result::kNotStarted : Result::kStopped;
  }

  // now - mark, clamped to [0, INT64_MAX]: a backwards clock gives 0, never a negative lap.
  std::int64_t segment(std::int64_t now) const noexcept {
    if (now <= mark_) return 0;
    const std::uint64_t d = static_cast<std::uint64_t>(now) - static_cast<std::uint64_t>(mark_);
    return d > static_cast<std::uint64_t>(kMaxNs) ? kMaxNs : static_cast<std::int64_t>(d);
  }

  // Both arguments are >= 0 here.
  static std::int64_t add_sat(std::int64_t a, std::int64_t b) noexcept {
    return a > kMaxNs - b ? kMaxNs : a + b;
  }

  State state_ = State::kNeverStarted;
  std::int64_t mark_ = 0;   // time of the last start() or lap()
  std::int64_t accum_ = 0;  // running total of the current lap before mark_
  std::vector<std::int64_t> laps_;
};

}  // namespace fastpgd
