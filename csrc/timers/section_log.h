// The log of one timing section of fastpgd.Timers: what `with timers("x"):` records.
//
// An enter appends ~t (negative for every t >= 0, so it cannot be mistaken for an exit) and an
// exit appends t, in call order, as int64 nanoseconds. The entries are handed over in bulk
// (take()) to fastpgd/timers.py, which pairs enters with exits, nested or not, and keeps the
// statistics: the hot path is an append and nothing else. Times are passed in, as in the
// stopwatch core; the binding reads the clock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace fastpgd {

class SectionLog {
 public:
  // Both throw std::bad_alloc when the log cannot grow; the log is then unchanged.
  void enter(std::int64_t now) { entries_.push_back(~now); }
  void exit(std::int64_t now) { entries_.push_back(now); }

  // The entries logged so far, removed from the log.
  std::vector<std::int64_t> take() noexcept {
    std::vector<std::int64_t> taken;
    taken.swap(entries_);
    return taken;
  }

  // Forgets the entries and gives their memory back.
  void discard() noexcept { std::vector<std::int64_t>().swap(entries_); }

  std::size_t size() const noexcept { return entries_.size(); }

 private:
  std::vector<std::int64_t> entries_;
};

}  // namespace fastpgd
