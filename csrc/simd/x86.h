/*
 * simd/x86.h -- what the AVX2 and AVX-512 vocabularies share: SSE2 work
 * that does not depend on the vector width (every x86-64 CPU has SSE2).
 */
#ifndef ATTNX_SIMD_X86_H
#define ATTNX_SIMD_X86_H

#include <immintrin.h>

#if defined(_MSC_VER)
#define VX_INLINE static __forceinline
#else
#define VX_INLINE static inline __attribute__((always_inline))
#endif

VX_INLINE unsigned vx_bytes_nz16(const unsigned char *m)
{
    __m128i b = _mm_loadu_si128((const __m128i *)(const void *)m);
    return ~(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(b, _mm_setzero_si128())) & 0xFFFFu;
}

/* bit k set where m[k] != 0, k < n <= 32 (n bytes readable) */
VX_INLINE unsigned vx_bytes_nz(const unsigned char *m, size_t n)
{
    if (n == 8) {
        __m128i b = _mm_loadl_epi64((const __m128i *)(const void *)m);
        return ~(unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(b, _mm_setzero_si128())) & 0xFFu;
    }
    if (n == 16) return vx_bytes_nz16(m);
    if (n == 32) return vx_bytes_nz16(m) | vx_bytes_nz16(m + 16) << 16;
    unsigned bits = 0;
    for (size_t k = 0; k < n; k++) bits |= (unsigned)(m[k] != 0) << k;
    return bits;
}

/* the sum of the 4 lanes: (l0 + l2) + (l1 + l3) */
VX_INLINE double vx_sum4d(__m256d v)
{
    __m128d b = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(b, _mm_unpackhi_pd(b, b)));
}

VX_INLINE void vx_prefetch(const void *p) { _mm_prefetch((const char *)p, _MM_HINT_T0); }

#endif /* ATTNX_SIMD_X86_H */
