// loaderd's fused augment kernel: crop + antialiased bilinear resize + horizontal flip +
// normalize + layout (NHWC u8 / NCHW f32 / NCHW f16) in one pass over the output.
//
// The resize is Pillow's BILINEAR as the CPU path does it: a separable triangle filter whose
// support is max(1, downscale factor), taps computed per output pixel in double precision and
// stored as float, the vertical taps summed first (per source column), then the horizontal
// ones, rounded to u8 once. Compiled with --fmad=false so every float multiply and add rounds
// as in Rust; reference.rs is the same arithmetic, line for line.
//
// One thread per output pixel (all three channels); blockIdx.y is the sample. No headers.

#define KCACHE 64

struct Sample {
    unsigned long long src_offset;  // byte offset of pixel (0, 0) in `src`
    unsigned int width;             // source pixels
    unsigned int height;
    unsigned int stride;            // bytes per source row (>= 3 * width)
    unsigned int flip;              // nonzero: mirror left-right
    double x0, y0, x1, y1;          // crop box in source pixels, pixel i spans [i, i+1)
};

struct Norm {
    float mean[3];
    float std[3];
};

// One output position's taps along one axis.
struct Axis {
    double center;
    double filterscale;
    double sum;
    long long first;
    long long n;
};

// Rust's `v as i64`: NaN is 0, out-of-range values saturate (a C cast would be undefined).
__device__ long long sat_ll(double v) {
    if (v != v) return 0;
    if (v >= 9223372036854775807.0) return 9223372036854775807LL;
    if (v <= -9223372036854775808.0) return (-9223372036854775807LL - 1);
    return (long long)v;
}

// Tap count bound 2 * ceil(support) + 1 in 64 bits, saturating like reference.rs: a huge crop
// box (support past 2^31) overflowed the old `int`.
__device__ long long kernel_size(double support) {
    long long c = sat_ll(ceil(support));
    if (c > (9223372036854775807LL - 1) / 2) return 9223372036854775807LL;
    return c * 2 + 1;
}

__device__ Axis axis_taps(unsigned int in_size_u, double b0, double b1, unsigned int out,
                          unsigned int xx) {
    long long in_size = in_size_u > 0 ? (long long)in_size_u : 1;
    double scale = (b1 - b0) / (double)out;
    double filterscale = fmax(scale, 1.0);
    double support = filterscale;
    long long ksize = kernel_size(support);
    Axis a;
    a.center = b0 + ((double)xx + 0.5) * scale;
    a.filterscale = filterscale;
    long long xmin = sat_ll(a.center - support + 0.5);
    if (xmin < 0) xmin = 0;
    long long xmax = sat_ll(a.center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    if (xmax <= xmin) {
        // A box at or past the edge: use the nearest pixel.
        xmin = sat_ll(floor(a.center));
        if (xmin < 0) xmin = 0;
        if (xmin > in_size - 1) xmin = in_size - 1;
        xmax = xmin + 1;
    }
    long long n = xmax - xmin;
    a.n = n < ksize ? n : ksize;
    a.first = xmin;
    double sum = 0.0;
    for (long long k = 0; k < a.n; k++) {
        double d = ((double)(k + xmin) - a.center + 0.5) / filterscale;
        sum += fmax(1.0 - fabs(d), 0.0);
    }
    a.sum = sum;
    return a;
}

__device__ float tap_weight(const Axis& a, long long k) {
    if (!(a.sum > 0.0)) return k == 0 ? 1.0f : 0.0f;
    double d = ((double)(k + a.first) - a.center + 0.5) / a.filterscale;
    float w = (float)fmax(1.0 - fabs(d), 0.0);
    return (float)((double)w / a.sum);
}

__device__ unsigned char to_u8(float v) {
    float t = fminf(fmaxf(v + 0.5f, 0.0f), 255.0f);
    return (unsigned char)(unsigned int)t;
}

__device__ unsigned short to_f16(float v) {
    unsigned short h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v));
    return h;
}

// layout: 0 = NHWC u8, 1 = NCHW f32, 2 = NCHW f16. `out` holds `gridDim.y` samples back to
// back, each out_w * out_h * 3 elements. Pixel indices are 64-bit: out_w * out_h may pass
// 2^32.
extern "C" __global__ void loaderd_augment(const unsigned char* __restrict__ src,
                                           const Sample* __restrict__ samples,
                                           unsigned char* __restrict__ out,
                                           unsigned int out_w, unsigned int out_h,
                                           unsigned int layout, Norm norm) {
    unsigned long long plane = (unsigned long long)out_w * out_h;
    unsigned long long idx = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= plane) return;
    const Sample s = samples[blockIdx.y];
    unsigned int ox = (unsigned int)(idx % out_w);
    unsigned int oy = (unsigned int)(idx / out_w);
    unsigned int from = s.flip ? out_w - 1 - ox : ox;
    Axis ax = axis_taps(s.width, s.x0, s.x1, out_w, from);
    Axis ay = axis_taps(s.height, s.y0, s.y1, out_h, oy);

    float wy_cache[KCACHE];
    int cached = ay.n < KCACHE ? (int)ay.n : KCACHE;
    for (int i = 0; i < cached; i++) wy_cache[i] = tap_weight(ay, i);

    const unsigned char* img = src + s.src_offset;
    float r = 0.0f, g = 0.0f, b = 0.0f;
    for (long long j = 0; j < ax.n; j++) {
        float wx = tap_weight(ax, j);
        const unsigned char* col = img + (ax.first + j) * 3;
        float ar = 0.0f, ag = 0.0f, ab = 0.0f;
        for (long long i = 0; i < ay.n; i++) {
            float wy = i < KCACHE ? wy_cache[i] : tap_weight(ay, i);
            const unsigned char* p = col + (ay.first + i) * (long long)s.stride;
            ar += wy * (float)p[0];
            ag += wy * (float)p[1];
            ab += wy * (float)p[2];
        }
        r += wx * ar;
        g += wx * ag;
        b += wx * ab;
    }
    unsigned char u[3] = {to_u8(r), to_u8(g), to_u8(b)};

    unsigned long long sample = blockIdx.y;
    if (layout == 0) {
        unsigned char* o = out + (sample * plane + idx) * 3;
        o[0] = u[0];
        o[1] = u[1];
        o[2] = u[2];
        return;
    }
    for (int c = 0; c < 3; c++) {
        float v = ((float)u[c] / 255.0f - norm.mean[c]) / norm.std[c];
        unsigned long long at = (sample * 3 + c) * plane + idx;
        if (layout == 1) {
            ((float*)out)[at] = v;
        } else {
            ((unsigned short*)out)[at] = to_f16(v);
        }
    }
}
