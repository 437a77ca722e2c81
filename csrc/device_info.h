// What the CUDA runtime (linked statically) sees on this machine.
#pragma once

namespace fastpgd {

// Number of usable CUDA devices; 0 when there is no driver or no device.
int cuda_device_count();

}  // namespace fastpgd
