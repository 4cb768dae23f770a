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

VX_INLINE void vx_prefetch(const void *p) { _mm_prefetch((const char *)p, _MM_HINT_T0); }

#endif /* ATTNX_SIMD_X86_H */
