/* The hash grid on the CPU: hash_grid_torch's encoding (db3d/nerf/encoding.py) as one loop per
 * point and level, compiled at first use by db3d/nerf/cpu_kernel.py.
 *
 * Inputs, every array C-contiguous:
 *   x (N, 3) positions already clamped to [0, 1]; table (P, F);
 *   per level l: scale[l] (grid coordinate = x * scale + 0.5), factor[l][3] (dense levels: R^d;
 *   hashed levels: the prime of dimension d masked to the level's rows), mask[l] (hashed: rows - 1;
 *   dense: -1, no mask), rows[l] (dense: the level's rows, where the index wraps; hashed: 0),
 *   offset[l] (first table row);
 *   out and grad_out (N, L * F), level-major features, hash_grid_torch's layout.
 *
 * Bit-identical to hash_grid_torch's tensor ops (tests/nerf/test_cpu_kernel.py): every product
 * and sum is the same float operation in the same order. Plain products and sums round on their
 * own (-ffp-contract=off); where torch's addcmul_ fuses its multiply-add (its AVX2 / AVX-512
 * kernels, and ARM's), MADD is a fused multiply-add too (DB3D_FUSED_ADDCMUL, set by the loader):
 *   - coordinates: pos = x * scale, then + 0.5; cell = floor(pos); frac = pos - cell;
 *     weights (1 - frac, frac); index terms in integers (exact);
 *   - forward, per output element: corners in (a, b, c) order, out = w * v, then
 *     out.addcmul_(w, v), with w = (wx[a] * wy[b]) * wz[c];
 *   - the table's gradient, per table entry: corner-major, then point order (each entry belongs
 *     to one level), as index_add_ over the corners' flat (L, N) rows, adding the rounded w * g.
 * One thread: the order of the sums, and so the result, never depends on the machine's cores.
 * Gradients with respect to x are not computed here (the caller uses the tensor ops then).
 * Every function returns 0; 1 when it cannot take the call (more than MAX_FEAT features), 2 when
 * its scratch memory cannot be had, 3 when a coordinate lies outside [0, 1] (after the caller's clamp
 * only a NaN does: it has no table row; the caller raises).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#define MAX_FEAT 8

#if DB3D_FUSED_ADDCMUL
#define MADD_double(a, b, c) __builtin_fma((a), (b), (c))
#define MADD_float(a, b, c) __builtin_fmaf((a), (b), (c))
#else
#define MADD_double(a, b, c) ((a) * (b) + (c))
#define MADD_float(a, b, c) ((a) * (b) + (c))
#endif
#define MADD(T, a, b, c) MADD_##T(a, b, c)

/* The per-dimension weights and index terms of point p at one level. */
#define POINT_TERMS(T, FLOOR)                                                                           \
    T u[3][2];                                                                                         \
    int64_t t[3][2];                                                                                   \
    for (int d = 0; d < 3; d++) {                                                                      \
        T pos = x[p * 3 + d] * sc;                                                                     \
        pos = pos + (T)0.5;                                                                            \
        const T cell = FLOOR(pos);                                                                     \
        const T frac = pos - cell;                                                                     \
        u[d][0] = (T)1.0 - frac;                                                                       \
        u[d][1] = frac;                                                                                \
        const int64_t near = (int64_t)cell * fac[d];                                                   \
        if (hashed) {                                                                                  \
            t[d][0] = near & msk;                                                                      \
            t[d][1] = (t[d][0] + fac[d]) & msk;                                                        \
        } else {                                                                                       \
            t[d][0] = near;                                                                            \
            t[d][1] = near + fac[d];                                                                   \
        }                                                                                              \
    }

/* The table row of corner (a, b, c): sum and one wrap (dense levels) or XOR (hashed). */
#define CORNER_ROW(a, b, c)                                                                            \
    (hashed ? ((t[0][a] ^ t[1][b]) ^ t[2][c]) + off                                                   \
            : ((t[0][a] + t[1][b]) + t[2][c] >= size ? (t[0][a] + t[1][b]) + t[2][c] - size          \
                                                     : (t[0][a] + t[1][b]) + t[2][c]) + off)

#define LEVEL_CONSTANTS(T)                                                                              \
    const T sc = scale[level];                                                                         \
    const int64_t *fac = factor + 3 * level;                                                           \
    const int64_t msk = mask[level], size = rows[level], off = offset[level];                          \
    const int hashed = msk >= 0;

#define DEFINE_KERNELS(T, SUFFIX, FLOOR)                                                                \
static inline __attribute__((always_inline)) int forward_##SUFFIX(                                    \
        const T *restrict x, int64_t n, const T *restrict table, const int64_t nf, int64_t n_levels,   \
        const T *restrict scale, const int64_t *restrict factor, const int64_t *restrict mask,         \
        const int64_t *restrict rows, const int64_t *restrict offset, T *restrict out) {              \
    for (int64_t level = 0; level < n_levels; level++) {                                              \
        LEVEL_CONSTANTS(T)                                                                             \
        for (int64_t p = 0; p < n; p++) {                                                              \
            POINT_TERMS(T, FLOOR)                                                                      \
            T acc[MAX_FEAT];                                                                           \
            _Pragma("GCC unroll 8")                                                                    \
            for (int k = 0; k < 8; k++) {                                                              \
                const int a = k >> 2, b = (k >> 1) & 1, c = k & 1;                                    \
                const T w = (u[0][a] * u[1][b]) * u[2][c];                                             \
                const T *v = table + (CORNER_ROW(a, b, c)) * nf;                                       \
                for (int64_t f = 0; f < nf; f++)                                                       \
                    acc[f] = k == 0 ? w * v[f] : MADD(T, w, v[f], acc[f]);                             \
            }                                                                                          \
            T *o = out + (p * n_levels + level) * nf;                                                  \
            for (int64_t f = 0; f < nf; f++) o[f] = acc[f];                                            \
        }                                                                                              \
    }                                                                                                  \
    return 0;                                                                                          \
}                                                                                                      \
                                                                                                       \
/* 1 when every coordinate lies in [0, 1] (the caller clamped them; a NaN has no table row). */        \
static int in_unit_cube_##SUFFIX(const T *x, int64_t n) {                                             \
    int ok = 1;                                                                                        \
    for (int64_t i = 0; i < 3 * n; i++) ok &= (x[i] >= 0) & (x[i] <= 1);                              \
    return ok;                                                                                         \
}                                                                                                      \
                                                                                                       \
int hash_grid_forward_##SUFFIX(const T *x, int64_t n, const T *table, int64_t n_feat, int64_t n_levels, \
                               const T *scale, const int64_t *factor, const int64_t *mask,             \
                               const int64_t *rows, const int64_t *offset, T *out) {                  \
    if (!in_unit_cube_##SUFFIX(x, n)) return 3;                                                        \
    if (n_feat == 2) /* Instant-NGP's F: a constant, so the feature loops unroll */                   \
        return forward_##SUFFIX(x, n, table, 2, n_levels, scale, factor, mask, rows, offset, out);     \
    if (n_feat <= MAX_FEAT)                                                                            \
        return forward_##SUFFIX(x, n, table, n_feat, n_levels, scale, factor, mask, rows, offset, out); \
    return 1;                                                                                          \
}                                                                                                      \
                                                                                                       \
/* One level's pass: every point's 8 corner rows and weights into scratch (as the forward forms them),  \
   then the scatter corner by corner, in index_add_'s order. */                                        \
static inline __attribute__((always_inline)) int backward_##SUFFIX(                                   \
        const T *restrict x, int64_t n, const int64_t nf, int64_t n_levels,                            \
        const T *restrict scale, const int64_t *restrict factor, const int64_t *restrict mask,         \
        const int64_t *restrict rows, const int64_t *restrict offset, const T *restrict grad_out,      \
        T *restrict grad_table, int64_t *restrict corner_rows, T *restrict corner_w) {                \
    for (int64_t level = 0; level < n_levels; level++) {                                              \
        LEVEL_CONSTANTS(T)                                                                             \
        for (int64_t p = 0; p < n; p++) {                                                              \
            POINT_TERMS(T, FLOOR)                                                                      \
            _Pragma("GCC unroll 8")                                                                    \
            for (int k = 0; k < 8; k++) {                                                              \
                const int a = k >> 2, b = (k >> 1) & 1, c = k & 1;                                    \
                corner_w[k * n + p] = (u[0][a] * u[1][b]) * u[2][c];                                   \
                corner_rows[k * n + p] = CORNER_ROW(a, b, c);                                          \
            }                                                                                          \
        }                                                                                              \
        for (int k = 0; k < 8; k++) { /* corner-major within the level (an entry has one level) */    \
            for (int64_t p = 0; p < n; p++) {                                                          \
                const T w = corner_w[k * n + p];                                                       \
                T *gt = grad_table + corner_rows[k * n + p] * nf;                                      \
                const T *g = grad_out + (p * n_levels + level) * nf;                                   \
                for (int64_t f = 0; f < nf; f++) {                                                     \
                    const T src = w * g[f];                                                            \
                    gt[f] = gt[f] + src;                                                               \
                }                                                                                      \
            }                                                                                          \
        }                                                                                              \
    }                                                                                                  \
    return 0;                                                                                          \
}                                                                                                      \
                                                                                                       \
/* grad_table (P, F) zeroed by the caller. */                                                          \
int hash_grid_backward_##SUFFIX(const T *x, int64_t n, int64_t n_feat, int64_t n_levels,              \
                                const T *scale, const int64_t *factor, const int64_t *mask,            \
                                const int64_t *rows, const int64_t *offset, const T *grad_out,         \
                                T *grad_table) {                                                       \
    if (n_feat > MAX_FEAT) return 1;                                                                   \
    if (!in_unit_cube_##SUFFIX(x, n)) return 3;                                                        \
    int64_t *corner_rows = malloc(sizeof(int64_t) * 8 * (n > 0 ? n : 1));                              \
    T *corner_w = malloc(sizeof(T) * 8 * (n > 0 ? n : 1));                                             \
    if (!corner_rows || !corner_w) {                                                                   \
        free(corner_rows);                                                                             \
        free(corner_w);                                                                                \
        return 2;                                                                                      \
    }                                                                                                  \
    const int status = n_feat == 2                                                                     \
        ? backward_##SUFFIX(x, n, 2, n_levels, scale, factor, mask, rows, offset, grad_out, grad_table, \
                            corner_rows, corner_w)                                                     \
        : backward_##SUFFIX(x, n, n_feat, n_levels, scale, factor, mask, rows, offset, grad_out,       \
                            grad_table, corner_rows, corner_w);                                        \
    free(corner_rows);                                                                                 \
    free(corner_w);                                                                                    \
    return status;                                                                                     \
}

DEFINE_KERNELS(float, f32, floorf)
DEFINE_KERNELS(double, f64, floor)
