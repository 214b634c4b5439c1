//! bfloat16 storage: the upper 16 bits of an f32 (sign, 8-bit exponent, 7-bit mantissa).
//! Widening is exact (a shift); narrowing rounds to nearest, ties to even, with AVX-512 BF16's
//! `vcvtneps2bf16` where the CPU has it (detected at run time) and the same rule in portable
//! code elsewhere. Both flush subnormal inputs to zero of the same sign and keep a NaN a
//! (quiet) NaN, as the instruction does, so the two paths give the same bits.

/// `dst[i] = f32(src[i])`, exactly.
///
/// # Panics
/// When the slices differ in length.
pub(crate) fn widen_bf16(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "widen_bf16: lengths differ");
    for (d, &h) in dst.iter_mut().zip(src) {
        *d = f32::from_bits(u32::from(h) << 16);
    }
}

/// `dst[i] = bf16(src[i])`, rounded to nearest even (subnormals flushed to zero).
///
/// # Panics
/// When the slices differ in length.
pub(crate) fn narrow_bf16(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "narrow_bf16: lengths differ");
    #[cfg(target_arch = "x86_64")]
    if has_avx512_bf16() {
        // SAFETY: the CPU has the features the function is compiled for (checked above)
        unsafe { narrow_avx512(src, dst) };
        return;
    }
    narrow_portable(src, dst);
}

/// Whether this CPU converts with AVX-512 BF16.
pub(crate) fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// One value, rounded to nearest even; a subnormal becomes a zero of its sign, a NaN a quiet
/// NaN.
#[inline(always)]
fn narrow_one(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x0040) as u16;
    }
    if x.is_subnormal() {
        return ((bits >> 16) & 0x8000) as u16;
    }
    // adding 0x7fff, plus the lowest kept bit, carries into the kept bits exactly when the
    // dropped half is above a tie, or a tie with an odd kept part; no finite input overflows
    let rounding = 0x7fff + ((bits >> 16) & 1);
    ((bits + rounding) >> 16) as u16
}

fn narrow_portable(src: &[f32], dst: &mut [u16]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = narrow_one(x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
fn narrow_avx512(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::{
        __m256bh, __m256i, _mm256_storeu_si256, _mm512_cvtneps_pbh, _mm512_loadu_ps,
    };
    let whole = src.len() / 16 * 16;
    for (s, d) in src[..whole]
        .chunks_exact(16)
        .zip(dst[..whole].chunks_exact_mut(16))
    {
        // SAFETY: 16 f32 are read from `s` and 16 u16 written to `d`, both that long
        unsafe {
            let h = _mm512_cvtneps_pbh(_mm512_loadu_ps(s.as_ptr()));
            _mm256_storeu_si256(
                d.as_mut_ptr().cast::<__m256i>(),
                std::mem::transmute::<__m256bh, __m256i>(h),
            );
        }
    }
    narrow_portable(&src[whole..], &mut dst[whole..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values that meet every rule: ties (even and odd), halfway plus one ulp, subnormals,
    /// zeros, infinities, NaNs, the largest finite value, and random bits.
    fn cases() -> Vec<f32> {
        let mut v = vec![
            0.0,
            -0.0,
            1.0,
            -1.0,
            f32::from_bits(0x3f80_8000), // 1 + 2^-8: a tie, kept part even → down
            f32::from_bits(0x3f81_8000), // a tie, kept part odd → up
            f32::from_bits(0x3f80_8001), // above the tie → up
            f32::from_bits(0x3f80_7fff), // below the tie → down
            f32::MAX,
            f32::MIN_POSITIVE,
            f32::from_bits(1), // the smallest subnormal
            -f32::from_bits(0x007f_ffff),
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0xff80_0001), // a signalling NaN
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..1000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            v.push(f32::from_bits((state >> 32) as u32));
        }
        v
    }

    #[test]
    fn rounding_is_to_nearest_even_and_widening_is_exact() {
        let one = |bits: u32| narrow_one(f32::from_bits(bits));
        assert_eq!(one(0x3f80_8000), 0x3f80);
        assert_eq!(one(0x3f81_8000), 0x3f82);
        assert_eq!(one(0x3f80_8001), 0x3f81);
        assert_eq!(one(0x3f80_7fff), 0x3f80);
        assert_eq!(
            one(0x7f7f_ffff),
            0x7f80,
            "the largest f32 rounds to infinity"
        );
        assert_eq!(
            one(0x8000_0001),
            0x8000,
            "a subnormal flushes to a signed zero"
        );
        assert!(f32::from_bits(u32::from(one(0xff80_0001)) << 16).is_nan());
        for x in cases()
            .into_iter()
            .filter(|x| x.is_finite() && !x.is_subnormal())
        {
            let mut back = [0.0f32];
            widen_bf16(&[narrow_one(x)], &mut back);
            let bound = x.abs() * 2f32.powi(-8);
            assert!(
                (back[0] - x).abs() <= bound || back[0].is_infinite(),
                "{x:e} → {}",
                back[0]
            );
        }
    }

    #[test]
    fn the_avx512_path_gives_the_portable_bits() {
        if !has_avx512_bf16() {
            eprintln!("no AVX-512 BF16 on this CPU: the portable path is the only one");
            return;
        }
        let src = cases();
        let (mut fast, mut portable) = (vec![0u16; src.len()], vec![0u16; src.len()]);
        // SAFETY: the features were detected above
        unsafe { narrow_avx512(&src, &mut fast) };
        narrow_portable(&src, &mut portable);
        for ((x, a), b) in src.iter().zip(&fast).zip(&portable) {
            if x.is_nan() {
                assert!(
                    a & 0x7f80 == 0x7f80 && a & 0x7f != 0 && b & 0x7f != 0,
                    "{x:?}"
                );
            } else {
                assert_eq!(a, b, "{x:e} ({:#010x})", x.to_bits());
            }
        }
    }
}
