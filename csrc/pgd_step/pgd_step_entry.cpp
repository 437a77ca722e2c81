// The host entry point of the fused PGD step (pgd_step_entry.h): checks, then dispatch.
#include "pgd_step/pgd_step_entry.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "errors.h"
#include "pgd_step/pgd_step.h"

namespace fastpgd {
namespace {

std::string dtype_name(const DLDataType& t) {
  std::string base;
  switch (t.code) {
    case kDLFloat: base = "float"; break;
    case kDLBfloat: base = "bfloat"; break;
    case kDLInt: base = "int"; break;
    case kDLUInt: base = "uint"; break;
    case kDLComplex: base = "complex"; break;
    case kDLBool: return "bool";
    default: base = "dtype_code" + std::to_string(int(t.code)) + "_"; break;
  }
  std::string name = base + std::to_string(int(t.bits));
  if (t.lanes != 1) name += "x" + std::to_string(int(t.lanes));
  return name;
}

std::string device_name(const DLDevice& d) {
  switch (d.device_type) {
    case kDLCPU: return "cpu";
    case kDLCUDA: return "cuda:" + std::to_string(d.device_id);
    case kDLCUDAHost: return "cuda_host";
    case kDLCUDAManaged: return "cuda_managed:" + std::to_string(d.device_id);
    case kDLROCM: return "rocm:" + std::to_string(d.device_id);
    default:
      return "device_type" + std::to_string(int(d.device_type)) + ":" +
             std::to_string(d.device_id);
  }
}

std::string shape_str(const DLTensor& t) {
  std::string s = "[";
  for (int i = 0; i < t.ndim; ++i) {
    if (i) s += ", ";
    s += std::to_string(t.shape[i]);
  }
  return s + "]";
}

std::string strides_str(const DLTensor& t) {
  if (t.strides == nullptr) return "compact";
  std::string s = "(";
  for (int i = 0; i < t.ndim; ++i) {
    if (i) s += ", ";
    s += std::to_string(t.strides[i]);
  }
  return s + ")";
}

std::string num_str(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.9g", v);
  return buf;
}

bool same_dtype(const DLDataType& a, const DLDataType& b) {
  return a.code == b.code && a.bits == b.bits && a.lanes == b.lanes;
}
bool same_device(const DLDevice& a, const DLDevice& b) {
  return a.device_type == b.device_type && a.device_id == b.device_id;
}

DType to_dtype(const DLDataType& t, const char* name) {
  if (t.lanes == 1) {
    if (t.code == kDLFloat && t.bits == 32) return DType::kFloat32;
    if (t.code == kDLFloat && t.bits == 64) return DType::kFloat64;
    if (t.code == kDLFloat && t.bits == 16) return DType::kFloat16;
    if (t.code == kDLBfloat && t.bits == 16) return DType::kBFloat16;
  }
  throw_type_error(std::string(name) +
             " must be a floating-point tensor (float16, bfloat16, float32 or float64), got " +
             dtype_name(t));
}

int64_t numel(const DLTensor& t) {
  int64_t n = 1;
  for (int i = 0; i < t.ndim; ++i) n *= t.shape[i];
  return n;
}

// Row-major contiguous (dims of size 1 may have any stride; a storage offset is fine).
bool is_contiguous(const DLTensor& t) {
  if (t.strides == nullptr) return true;
  int64_t expected = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    if (t.shape[i] == 0) return true;
    if (t.shape[i] != 1 && t.strides[i] != expected) return false;
    expected *= t.shape[i];
  }
  return true;
}

const char* begin_ptr(const DLTensor& t) {
  return static_cast<const char*>(t.data) + t.byte_offset;
}

// Contiguous tensors occupy [begin, begin + numel * itemsize).
bool overlaps(const DLTensor& a, const DLTensor& b, int64_t itemsize_a, int64_t itemsize_b) {
  const int64_t na = numel(a) * itemsize_a, nb = numel(b) * itemsize_b;
  if (na == 0 || nb == 0 || !same_device(a.device, b.device)) return false;
  const uintptr_t a0 = reinterpret_cast<uintptr_t>(begin_ptr(a));
  const uintptr_t b0 = reinterpret_cast<uintptr_t>(begin_ptr(b));
  return a0 < b0 + uintptr_t(nb) && b0 < a0 + uintptr_t(na);
}

size_t itemsize(DType d) { return (d == DType::kFloat64) ? 8 : (d == DType::kFloat32 ? 4 : 2); }

double load_as_double(const void* p, DType d, int64_t i) {
  switch (d) {
    case DType::kFloat32: return static_cast<const float*>(p)[i];
    case DType::kFloat64: return static_cast<const double*>(p)[i];
    case DType::kFloat16: return half_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::kBFloat16: return bf16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
  }
  return 0.0;
}

// Checks an x_adv-like tensor against x_adv (dtype, device, shape, contiguity).
void check_like(const DLTensor& t, const DLTensor& x, const char* name) {
  if (!same_dtype(t.dtype, x.dtype)) {
    throw_type_error(std::string(name) + " must have the same dtype as x_adv, got " +
               dtype_name(t.dtype) + " and " + dtype_name(x.dtype));
  }
  if (!same_device(t.device, x.device)) {
    throw_value_error(std::string(name) + " must be on the same device as x_adv, got " +
                device_name(t.device) + " and " + device_name(x.device));
  }
  bool same_shape = t.ndim == x.ndim;
  for (int i = 0; same_shape && i < t.ndim; ++i) same_shape = t.shape[i] == x.shape[i];
  if (!same_shape) {
    throw_value_error(std::string(name) + " must have the same shape as x_adv, got " + shape_str(t) +
                " and " + shape_str(x));
  }
  if (!is_contiguous(t)) {
    throw_value_error(std::string(name) + " must be contiguous, got strides " + strides_str(t) +
                " for shape " + shape_str(t) + " (call .contiguous())");
  }
}

}  // namespace

void check_alpha(double alpha) {
  if (!std::isfinite(alpha)) throw_value_error("alpha must be finite, got " + num_str(alpha));
}

void check_clamp(double lo, double hi) {
  if (std::isnan(lo) || std::isnan(hi)) {
    throw_value_error("clamp bounds must not be NaN, got (" + num_str(lo) + ", " + num_str(hi) + ")");
  }
  if (lo > hi) {
    throw_value_error("clamp must have lo <= hi, got (" + num_str(lo) + ", " + num_str(hi) + ")");
  }
}

void check_eps(double eps) {
  if (!(eps >= 0.0)) throw_value_error("eps must be >= 0 and not NaN, got " + num_str(eps));
}

StepParams check_step(const StepTensors& tensors, const StepParams& scalars) {
  StepParams p = scalars;
  const DLTensor& x = *tensors.x_adv;
  const DLTensor& g = *tensors.grad;
  const DLTensor& x0 = *tensors.x0;
  p.dtype = to_dtype(x.dtype, "x_adv");
  check_like(g, x, "grad");
  check_like(x0, x, "x0");
  if (!is_contiguous(x)) {
    throw_value_error("x_adv must be contiguous, got strides " + strides_str(x) + " for shape " +
                shape_str(x) + " (call .contiguous())");
  }
  if (tensors.x_adv_read_only) throw_value_error("x_adv is read-only, but it is updated in place");
  const DLDevice dev = x.device;
  if (dev.device_type != kDLCPU && dev.device_type != kDLCUDA) {
    throw_value_error("x_adv is on " + device_name(dev) + "; fastpgd supports cpu and cuda tensors");
  }
#ifndef FASTPGD_WITH_CUDA
  if (dev.device_type == kDLCUDA) {
    throw_value_error("x_adv is on " + device_name(dev) +
                ", but this build of fastpgd has no CUDA kernels; reinstall it where nvcc is "
                "found (see fastpgd.extension_info())");
  }
#endif
  const int64_t isz = int64_t(itemsize(p.dtype));
  if (overlaps(x, g, isz, isz)) {
    throw_value_error("x_adv must not overlap grad: it is written while grad is read");
  }
  if (overlaps(x, x0, isz, isz)) {
    throw_value_error("x_adv must not overlap x0: it is written while x0 is read");
  }
  p.batch = x.ndim == 0 ? 1 : x.shape[0];
  p.sample_numel = 1;
  for (int i = 1; i < x.ndim; ++i) p.sample_numel *= x.shape[i];

  if (tensors.eps != nullptr) {
    const DLTensor& e = *tensors.eps;
    if (!same_dtype(e.dtype, x.dtype)) {
      throw_type_error("eps must have the same dtype as x_adv, got " + dtype_name(e.dtype) + " and " +
                 dtype_name(x.dtype));
    }
    if (!same_device(e.device, dev)) {
      throw_value_error("eps must be on the same device as x_adv, got " + device_name(e.device) +
                  " and " + device_name(dev));
    }
    if (e.ndim != 1 || e.shape[0] != p.batch) {
      throw_value_error("eps must be a float or a 1-D tensor with one value per sample (" +
                  std::to_string(p.batch) + "), got shape " + shape_str(e));
    }
    if (!is_contiguous(e)) throw_value_error("eps must be contiguous, got strides " + strides_str(e));
    if (overlaps(x, e, isz, isz)) {
      throw_value_error("x_adv must not overlap eps: it is written while eps is read");
    }
    p.eps_per_sample = begin_ptr(e);
    // On the CPU the values are checked here; on CUDA that would cost a device sync, so a
    // negative or NaN per-sample eps there gives NaN or an inverted ball, as in the reference.
    if (dev.device_type == kDLCPU) {
      for (int64_t i = 0; i < p.batch; ++i) {
        const double v = load_as_double(p.eps_per_sample, p.dtype, i);
        if (!(v >= 0.0)) {
          throw_value_error("eps must be >= 0 and not NaN, got " + num_str(v) + " for sample " +
                      std::to_string(i));
        }
      }
    }
  }
  p.x_adv = const_cast<char*>(begin_ptr(x));
  p.grad = begin_ptr(g);
  p.x0 = begin_ptr(x0);
  p.cuda = dev.device_type == kDLCUDA;
  p.device = dev.device_id;
  return p;
}

void run_step(const StepParams& p, void* cuda_stream) {
  if (!p.cuda) {
    pgd_step_cpu(p);
    return;
  }
#ifdef FASTPGD_WITH_CUDA
  pgd_step_cuda(p, cuda_stream);
#else
  (void)cuda_stream;
  // check_step() refuses CUDA tensors in a build without CUDA kernels.
  throw std::logic_error("fastpgd: run_step got CUDA tensors in a build without CUDA kernels");
#endif
}

void cast(const DLTensor& s, const DLTensor& d, bool dst_read_only) {
  const DType sd = to_dtype(s.dtype, "src"), dd = to_dtype(d.dtype, "dst");
  if ((sd == DType::kFloat32) == (dd == DType::kFloat32) || sd == DType::kFloat64 ||
      dd == DType::kFloat64) {
    throw_type_error("_cast converts between float32 and float16/bfloat16");
  }
  if (s.device.device_type != kDLCPU || d.device.device_type != kDLCPU) {
    throw_value_error("_cast works on cpu tensors");
  }
  if (numel(s) != numel(d) || !is_contiguous(s) || !is_contiguous(d) || dst_read_only) {
    throw_value_error("_cast needs contiguous tensors of the same size, dst writable");
  }
  if (overlaps(s, d, int64_t(itemsize(sd)), int64_t(itemsize(dd)))) {
    throw_value_error("_cast needs dst not to overlap src");
  }
  cast_cpu(begin_ptr(s), sd, const_cast<char*>(begin_ptr(d)), dd, numel(s));
}

}  // namespace fastpgd
