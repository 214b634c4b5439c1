//! Our own single-threaded f32 GEMM for CPUs with AVX-512, `C ← α·op(A)·op(B) + β·C`, used
//! instead of matrixmultiply's where it is faster (see [`choose`]).
//!
//! Why: matrixmultiply packs an operand that is contiguous along `k` (`A` as stored, or `Bᵀ`)
//! one element at a time. Here such blocks are packed by 8×8 register transposes, the
//! microkernel keeps the A panel in L1 and streams B from L2, and the block sizes were tuned
//! on the reference step's products (`docs/performance.md`).
//!
//! `B` is packed from a matrix in memory, or from a convolution's input planes
//! ([`ShiftedPlanes`]: its column matrix, never written out).
//!
//! The loops are BLIS's, for row-major `C`:
//! - for each block of [`NC`] columns, for each slice of [`KC`] along `k`: pack that slice of
//!   `B` into panels [`NR`] columns wide;
//! - for each block of [`MC`] rows: pack `A` into panels [`MR`] rows high;
//! - for each A panel, for each B panel: the microkernel adds the `MR×NR` tile `A·B` into `C`.
//!
//! The microkernel holds the tile in 16 vector registers; each step along `k` loads two
//! 16-wide vectors of B, broadcasts eight values of A, and issues 16 fused multiply-adds.
//! Every element of `C` is the sum of the same `KC` slices, each summed in the same order,
//! whatever the row and column ranges of the call: results do not depend on how the engine
//! cuts a product between threads (it cuts at multiples of 64, a multiple of `MR` and `NR`). A last panel of `B` at most half full gets a tile half as wide.

use super::GemmFn;
use std::arch::x86_64::*;
use std::cell::Cell;

/// Rows of a microkernel tile.
const MR: usize = 8;
/// Columns of a microkernel tile (two 16-wide vectors).
const NR: usize = 32;
/// Depth of one slice along `k`.
const KC: usize = 256;
/// Rows of `A` packed at a time.
const MC: usize = 64;
/// Columns of `B` packed at a time.
const NC: usize = 512;
/// Products narrower or shallower than this go to matrixmultiply: its 16×16 tile wastes less
/// on them, and they are cheap either way.
const MIN_SIDE: usize = 64;

/// The f32 GEMM for an `m×k · k×n` product: ours on CPUs with AVX-512 when `n` and `k` are at
/// least [`MIN_SIDE`], matrixmultiply's otherwise. Chosen once per product, before the
/// engine cuts it between threads, so that every block runs the same arithmetic.
pub(crate) fn choose(m: usize, k: usize, n: usize) -> GemmFn<f32> {
    if takes(m, k, n) {
        sgemm
    } else {
        matrixmultiply::sgemm
    }
}

/// Whether [`choose`] picks our kernel for an `m×k · k×n` product.
pub(crate) fn takes(_m: usize, k: usize, n: usize) -> bool {
    n >= MIN_SIDE && k >= MIN_SIDE && available()
}

/// Whether this CPU runs our kernel.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
}

thread_local! {
    /// Each thread's packing buffers, taken for the length of one call (and put back).
    static PACKED: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// `C ← α·A·B + β·C` with matrixmultiply's arguments (element `(i, p)` of `A` at
/// `a + i·rsa + p·csa`, likewise `B` and `C`). With `β = 0`, `C` is only written.
///
/// # Safety
/// The CPU has AVX-512F, AVX2 and FMA ([`available`]); the pointers and strides describe
/// valid `m×k`, `k×n` and `m×n` matrices, and `c` aliases neither `a` nor `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    a: *const f32,
    rsa: isize,
    csa: isize,
    b: *const f32,
    rsb: isize,
    csb: isize,
    beta: f32,
    c: *mut f32,
    rsc: isize,
    csc: isize,
) {
    if csc != 1 || rsc < 0 || k == 0 {
        // strided output rows, or no inner dimension (C = βC): not this kernel's case
        // SAFETY: forwarded from the caller's contract.
        return unsafe {
            matrixmultiply::sgemm(m, k, n, alpha, a, rsa, csa, b, rsb, csb, beta, c, rsc, csc)
        };
    }
    // SAFETY: the caller's contract.
    unsafe {
        with_packing(|a_packed, b_packed| {
            blocked(
                m,
                k,
                n,
                alpha,
                (a, rsa, csa),
                &Strided { b, rsb, csb },
                beta,
                (c, rsc as usize),
                a_packed,
                b_packed,
            )
        })
    };
}

/// `C ← α·A·B + β·C` where `B` is the column matrix of a convolution read straight from its
/// input planes ([`ShiftedPlanes`]: `k = channels·taps`, `n = h·w`), packed into the
/// micro-kernel's panels as it is read: the same panels, hence the same bits, as [`sgemm`] on
/// the column matrix written out, without writing it. `C` is `m×n`, rows `ldc` apart.
///
/// # Safety
/// The CPU has AVX-512F, AVX2 and FMA ([`available`]); `a` (strides `rsa`, `csa`) holds a
/// valid `m×k` matrix and `c` an `m×n` one that aliases neither `a` nor the planes.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm_shifted(
    m: usize,
    alpha: f32,
    (a, rsa, csa): (*const f32, isize, isize),
    b: &ShiftedPlanes,
    beta: f32,
    c: *mut f32,
    ldc: usize,
) {
    let [h, w] = b.size;
    let (k, n) = (b.planes.len() / (h * w) * b.taps.len(), h * w);
    if m == 0 || n == 0 {
        return;
    }
    // SAFETY: the caller's contract; `ShiftedPlanes::pack` reads only inside the planes.
    unsafe {
        with_packing(|a_packed, b_packed| {
            blocked(
                m,
                k,
                n,
                alpha,
                (a, rsa, csa),
                b,
                beta,
                (c, ldc),
                a_packed,
                b_packed,
            )
        })
    };
}

/// Runs `f(a_packed, b_packed)` with this thread's packing buffers (a full A block and B
/// block), taken for the call and put back.
fn with_packing(f: impl FnOnce(*mut f32, *mut f32)) {
    let mut packed = PACKED.take();
    packed.resize(MC * KC + KC * NC, 0.0);
    let (a_packed, b_packed) = packed.split_at_mut(MC * KC);
    f(a_packed.as_mut_ptr(), b_packed.as_mut_ptr());
    PACKED.set(packed);
}

/// Where the micro-kernel's `B` panels are packed from.
trait PanelSource {
    /// Packs rows `pc..pc + kc` and columns `jc..jc + nc` of `B` into panels [`NR`] columns
    /// wide, as [`pack_panels`] lays them out (zeros past column `nc`).
    ///
    /// Safety: the block lies inside `B`; `out` holds `⌈nc/NR⌉·NR·kc` values; AVX-512F.
    unsafe fn pack(&self, pc: usize, kc: usize, jc: usize, nc: usize, out: *mut f32);
}

/// A `B` stored in memory, element `(p, j)` at `b + p·rsb + j·csb`.
struct Strided {
    b: *const f32,
    rsb: isize,
    csb: isize,
}

impl PanelSource for Strided {
    #[inline(always)]
    unsafe fn pack(&self, pc: usize, kc: usize, jc: usize, nc: usize, out: *mut f32) {
        // SAFETY: the trait's contract.
        unsafe {
            let from = self
                .b
                .offset(pc as isize * self.rsb + jc as isize * self.csb);
            pack_panels::<NR>(nc, kc, from, self.csb, self.rsb, out);
        }
    }
}

/// The column matrix of a stride-1 convolution whose output plane is as large as its input
/// (`h×w`, "same" padding), left in the input planes: row `p` is tap `t = p mod T` of plane
/// `p div T`, and `B(p, s) = plane[oy + dyₜ, ox + dxₜ]` at output position `s = oy·w + ox`,
/// 0 where that falls outside the plane. A tap's row of `B` is thus the plane shifted by
/// `dyₜ·w + dxₜ`, with the positions that wrapped round an edge masked to zero.
pub(crate) struct ShiftedPlanes<'a> {
    /// The input planes, `channels × h × w`.
    pub planes: &'a [f32],
    /// `[h, w]`.
    pub size: [usize; 2],
    /// Each tap's shift `[dy, dx]` (`i·d − p`, `j·d − p`), at most [`MAX_TAPS`].
    pub taps: &'a [[isize; 2]],
}

/// The most taps a [`ShiftedPlanes`] may hold (a 7×7 kernel has 49).
pub(crate) const MAX_TAPS: usize = 64;

impl PanelSource for ShiftedPlanes<'_> {
    #[inline(always)]
    unsafe fn pack(&self, pc: usize, kc: usize, jc: usize, nc: usize, out: *mut f32) {
        let [h, w] = self.size;
        let (plane, n, taps) = (h * w, h * w, self.taps.len());
        debug_assert!(taps <= MAX_TAPS && self.planes.len() >= plane * (pc + kc).div_ceil(taps));
        // SAFETY: the trait's contract; every load is masked to the lanes whose shifted
        // position lies inside its plane (so inside `planes`), and a masked-off lane is not
        // read (its address is formed with `wrapping_offset` and never dereferenced).
        unsafe {
            let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            let (hv, wv) = (_mm512_set1_epi32(h as i32), _mm512_set1_epi32(w as i32));
            let mut masks = [[0u16; 2]; MAX_TAPS];
            for (panel, j0) in (jc..jc + nc).step_by(NR).enumerate() {
                // each tap's mask over this panel's NR output positions
                for half in 0..2 {
                    let s = _mm512_add_epi32(_mm512_set1_epi32((j0 + 16 * half) as i32), lane);
                    let inside = _mm512_cmplt_epu32_mask(s, _mm512_set1_epi32(n as i32));
                    let (mut oy, mut ox) = ([0i32; 16], [0i32; 16]);
                    for l in 0..16 {
                        let s = j0 + 16 * half + l;
                        (oy[l], ox[l]) = ((s / w) as i32, (s % w) as i32);
                    }
                    let oy = _mm512_loadu_si512(oy.as_ptr().cast());
                    let ox = _mm512_loadu_si512(ox.as_ptr().cast());
                    for (mask, &[dy, dx]) in masks.iter_mut().zip(self.taps) {
                        let y = _mm512_add_epi32(oy, _mm512_set1_epi32(dy as i32));
                        let x = _mm512_add_epi32(ox, _mm512_set1_epi32(dx as i32));
                        mask[half] = inside
                            & _mm512_cmplt_epu32_mask(y, hv)
                            & _mm512_cmplt_epu32_mask(x, wv);
                    }
                }
                let to = out.add(panel * NR * kc);
                let (mut channel, mut tap) = (pc / taps, pc % taps);
                for p in 0..kc {
                    let [dy, dx] = self.taps[tap];
                    let shift = (channel * plane + j0) as isize + dy * w as isize + dx;
                    let from = self.planes.as_ptr().wrapping_offset(shift);
                    let [m0, m1] = masks[tap];
                    _mm512_storeu_ps(to.add(p * NR), _mm512_maskz_loadu_ps(m0, from));
                    _mm512_storeu_ps(
                        to.add(p * NR + 16),
                        _mm512_maskz_loadu_ps(m1, from.wrapping_add(16)),
                    );
                    tap += 1;
                    if tap == taps {
                        (channel, tap) = (channel + 1, 0);
                    }
                }
            }
        }
    }
}

/// The five loops (see the module's doc), compiled for AVX-512.
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn blocked(
    m: usize,
    k: usize,
    n: usize,
    alpha: f32,
    (a, rsa, csa): (*const f32, isize, isize),
    b: &impl PanelSource,
    beta: f32,
    (c, ldc): (*mut f32, usize),
    a_packed: *mut f32,
    b_packed: *mut f32,
) {
    // SAFETY (whole body): offsets stay inside the matrices the caller described, and packed
    // panels inside the buffers (at most MC×KC and KC×NC, rounded up to whole panels).
    unsafe {
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                b.pack(pc, kc, jc, nc, b_packed);
                // the first slice applies β; later ones add to what it left
                let beta = if pc == 0 { beta } else { 1.0 };
                for ic in (0..m).step_by(MC) {
                    let mc = MC.min(m - ic);
                    let a_block = a.offset(ic as isize * rsa + pc as isize * csa);
                    pack_panels::<MR>(mc, kc, a_block, rsa, csa, a_packed);
                    for ir in (0..mc).step_by(MR) {
                        for jr in (0..nc).step_by(NR) {
                            let tile = (
                                kc,
                                a_packed.add(ir * kc).cast_const(),
                                b_packed.add(jr * kc).cast_const(),
                                c.add((ic + ir) * ldc + jc + jr),
                                ldc,
                                ((mc - ir).min(MR), (nc - jr).min(NR)),
                                alpha,
                                beta,
                            );
                            // a last panel at most half full: half the tile
                            if nc - jr <= NR / 2 {
                                microkernel::<{ NR / 32 }>(tile);
                            } else {
                                microkernel::<{ NR / 16 }>(tile);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Packs the `rows×kc` block whose element `(i, p)` is at `src + i·rs + p·cs` into panels of
/// `W` rows: panel after panel, and within a panel the `W` values of each `p` side by side
/// (zeros past the last row).
///
/// Safety: as [`blocked`]; `out` holds `⌈rows/W⌉·W·kc` values.
#[inline(always)]
unsafe fn pack_panels<const W: usize>(
    rows: usize,
    kc: usize,
    src: *const f32,
    rs: isize,
    cs: isize,
    out: *mut f32,
) {
    // SAFETY: see the function's contract.
    unsafe {
        for (panel, i0) in (0..rows).step_by(W).enumerate() {
            let height = (rows - i0).min(W);
            let from = src.offset(i0 as isize * rs);
            let to = out.add(panel * W * kc);
            if height == W && rs == 1 {
                // a panel's W values lie side by side already: copy them
                for p in 0..kc {
                    std::ptr::copy_nonoverlapping(from.offset(p as isize * cs), to.add(p * W), W);
                }
            } else if height == W && cs == 1 {
                // each row lies along k: transpose 8×8 blocks in registers
                let k8 = kc / 8 * 8;
                for p0 in (0..k8).step_by(8) {
                    for q in (0..W).step_by(8) {
                        transpose_8x8(
                            from.offset(q as isize * rs + p0 as isize),
                            rs,
                            to.add(p0 * W + q),
                            W,
                        );
                    }
                }
                for p in k8..kc {
                    for i in 0..W {
                        *to.add(p * W + i) = *from.offset(i as isize * rs + p as isize);
                    }
                }
            } else {
                for p in 0..kc {
                    for i in 0..W {
                        *to.add(p * W + i) = if i < height {
                            *from.offset(i as isize * rs + p as isize * cs)
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }
}

/// Writes the transpose of the 8×8 block at `src` (rows `src_stride` apart) to `dst` (rows
/// `dst_stride` apart): unpack pairs, then quadruples, then swap 128-bit halves.
///
/// Safety: both blocks lie inside their buffers; the CPU has AVX.
#[inline(always)]
unsafe fn transpose_8x8(src: *const f32, src_stride: isize, dst: *mut f32, dst_stride: usize) {
    // SAFETY: see the function's contract.
    unsafe {
        let row = |i: isize| _mm256_loadu_ps(src.offset(i * src_stride));
        let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
        let (r4, r5, r6, r7) = (row(4), row(5), row(6), row(7));
        let (t0, t1) = (_mm256_unpacklo_ps(r0, r1), _mm256_unpackhi_ps(r0, r1));
        let (t2, t3) = (_mm256_unpacklo_ps(r2, r3), _mm256_unpackhi_ps(r2, r3));
        let (t4, t5) = (_mm256_unpacklo_ps(r4, r5), _mm256_unpackhi_ps(r4, r5));
        let (t6, t7) = (_mm256_unpacklo_ps(r6, r7), _mm256_unpackhi_ps(r6, r7));
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        let store = |i: usize, v: __m256| _mm256_storeu_ps(dst.add(i * dst_stride), v);
        store(0, _mm256_permute2f128_ps::<0x20>(u0, u4));
        store(1, _mm256_permute2f128_ps::<0x20>(u1, u5));
        store(2, _mm256_permute2f128_ps::<0x20>(u2, u6));
        store(3, _mm256_permute2f128_ps::<0x20>(u3, u7));
        store(4, _mm256_permute2f128_ps::<0x31>(u0, u4));
        store(5, _mm256_permute2f128_ps::<0x31>(u1, u5));
        store(6, _mm256_permute2f128_ps::<0x31>(u2, u6));
        store(7, _mm256_permute2f128_ps::<0x31>(u3, u7));
    }
}

/// A micro-kernel's arguments: depth, A panel, B panel, C tile, C's row length, the tile's
/// stored rows and columns, α, β.
type Tile = (
    usize,
    *const f32,
    *const f32,
    *mut f32,
    usize,
    (usize, usize),
    f32,
    f32,
);

/// `C_tile ← α·(A_panel·B_panel) + β·C_tile` for one `MR×16·NV` tile (the first `16·NV` of
/// the panel's [`NR`] columns), of which only the first `rows×cols` are stored (the packed
/// panels are zero beyond them). `β = 0` never reads `C`.
///
/// Safety: the panels hold `kc` steps; the stored part of the tile lies inside `C`.
#[inline(always)]
unsafe fn microkernel<const NV: usize>((kc, a, b, c, ldc, (rows, cols), alpha, beta): Tile) {
    // SAFETY: see the function's contract.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        for p in 0..kc {
            let b_row: [__m512; NV] =
                std::array::from_fn(|v| _mm512_loadu_ps(b.add(p * NR + 16 * v)));
            for (i, acc_row) in acc.iter_mut().enumerate() {
                let a_ip = _mm512_set1_ps(*a.add(p * MR + i));
                for v in 0..NV {
                    acc_row[v] = _mm512_fmadd_ps(a_ip, b_row[v], acc_row[v]);
                }
            }
        }
        let (alpha, beta_v) = (_mm512_set1_ps(alpha), _mm512_set1_ps(beta));
        for (i, acc_row) in acc.iter().enumerate().take(rows) {
            for (v, &sum) in acc_row.iter().enumerate() {
                let left = cols.saturating_sub(16 * v).min(16);
                if left == 0 {
                    break;
                }
                let mask: __mmask16 = (((1u32 << left) - 1) & 0xffff) as u16;
                let at = c.add(i * ldc + 16 * v);
                let scaled = _mm512_mul_ps(alpha, sum);
                let out = if beta == 0.0 {
                    scaled
                } else {
                    _mm512_fmadd_ps(beta_v, _mm512_maskz_loadu_ps(mask, at), scaled)
                };
                _mm512_mask_storeu_ps(at, mask, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `α·A·B + β·C` in f64, element `(i, p)` of A at `i·rsa + p·csa` (likewise B).
    #[allow(clippy::too_many_arguments)]
    fn reference(
        (m, k, n): (usize, usize, usize),
        alpha: f32,
        (a, rsa, csa): (&[f32], usize, usize),
        (b, rsb, csb): (&[f32], usize, usize),
        beta: f32,
        c: &[f32],
    ) -> Vec<f64> {
        (0..m * n)
            .map(|idx| {
                let (i, j) = (idx / n, idx % n);
                let dot: f64 = (0..k)
                    .map(|p| a[i * rsa + p * csa] as f64 * b[p * rsb + j * csb] as f64)
                    .sum();
                let old = if beta == 0.0 {
                    0.0
                } else {
                    beta as f64 * c[idx] as f64
                };
                alpha as f64 * dot + old
            })
            .collect()
    }

    /// Deterministic values in [−1, 1).
    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| (((i + seed) * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn matches_an_f64_reference_across_edges_layouts_and_scalings() {
        if !available() {
            eprintln!("no AVX-512 on this CPU: our sgemm is never chosen, nothing to test");
            return;
        }
        // sides below, at and above a tile, a panel block, and a k slice
        let shapes = [
            (1, 64, 64),
            (7, 65, 95),
            (8, 256, 96),
            (9, 257, 100),
            (63, 70, 513),
            (65, 520, 64),
            (130, 300, 600),
        ];
        for (case, &(m, k, n)) in shapes.iter().enumerate() {
            for layout in 0..4 {
                let (a_t, b_t) = (layout & 1 == 1, layout & 2 == 2);
                let a = values(m * k, case);
                let b = values(k * n, case + 7);
                // strides of the stored matrix, read as is or transposed
                let (rsa, csa) = if a_t { (1, m) } else { (k, 1) };
                let (rsb, csb) = if b_t { (1, k) } else { (n, 1) };
                for (alpha, beta) in [(1.0, 0.0), (1.0, 1.0), (0.5, -0.25)] {
                    let start = values(m * n, case + 3);
                    // β = 0 must not read C: start from NaN
                    let mut c = if beta == 0.0 {
                        vec![f32::NAN; m * n]
                    } else {
                        start.clone()
                    };
                    // SAFETY: AVX-512 checked above; the strides describe the buffers.
                    unsafe {
                        sgemm(
                            m,
                            k,
                            n,
                            alpha,
                            a.as_ptr(),
                            rsa as isize,
                            csa as isize,
                            b.as_ptr(),
                            rsb as isize,
                            csb as isize,
                            beta,
                            c.as_mut_ptr(),
                            n as isize,
                            1,
                        )
                    };
                    let want = reference(
                        (m, k, n),
                        alpha,
                        (&a, rsa, csa),
                        (&b, rsb, csb),
                        beta,
                        &start,
                    );
                    for (idx, (&got, &want)) in c.iter().zip(&want).enumerate() {
                        let tolerance = 1e-5 * (k as f64).sqrt() * 4.0;
                        assert!(
                            (got as f64 - want).abs() <= tolerance,
                            "m={m} k={k} n={n} a_t={a_t} b_t={b_t} α={alpha} β={beta}: \
                             C[{idx}] = {got}, expected {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn strided_operands_take_the_general_packing_path() {
        if !available() {
            return;
        }
        // A is every other row of a taller matrix, B every other column of a wider one
        let (m, k, n) = (20, 70, 66);
        let a = values(2 * m * k, 1);
        let b = values(k * 2 * n, 2);
        let mut c = vec![f32::NAN; m * n];
        // SAFETY: as above.
        unsafe {
            sgemm(
                m,
                k,
                n,
                1.0,
                a.as_ptr(),
                2 * k as isize,
                1,
                b.as_ptr(),
                2 * n as isize,
                2,
                0.0,
                c.as_mut_ptr(),
                n as isize,
                1,
            )
        };
        let want = reference((m, k, n), 1.0, (&a, 2 * k, 1), (&b, 2 * n, 2), 0.0, &c);
        for (&got, &want) in c.iter().zip(&want) {
            assert!((got as f64 - want).abs() < 1e-4, "{got} against {want}");
        }
    }

    #[test]
    fn a_cut_at_a_multiple_of_64_changes_no_bit() {
        if !available() {
            return;
        }
        let (m, k, n) = (128, 300, 192);
        let (a, b) = (values(m * k, 4), values(k * n, 5));
        let run = |rows: std::ops::Range<usize>, cols: std::ops::Range<usize>, c: &mut [f32]| {
            // SAFETY: as above; the block lies inside C.
            unsafe {
                sgemm(
                    rows.len(),
                    k,
                    cols.len(),
                    1.0,
                    a.as_ptr().add(rows.start * k),
                    k as isize,
                    1,
                    b.as_ptr().add(cols.start),
                    n as isize,
                    1,
                    0.0,
                    c.as_mut_ptr().add(rows.start * n + cols.start),
                    n as isize,
                    1,
                )
            }
        };
        let mut whole = vec![0.0; m * n];
        run(0..m, 0..n, &mut whole);
        let mut by_rows = vec![0.0; m * n];
        run(0..64, 0..n, &mut by_rows);
        run(64..m, 0..n, &mut by_rows);
        let mut by_cols = vec![0.0; m * n];
        run(0..m, 0..64, &mut by_cols);
        run(0..m, 64..n, &mut by_cols);
        assert_eq!(whole, by_rows);
        assert_eq!(whole, by_cols);
    }
}
