//! Exact neighbour searches for points that are the pixels of one image component.
//!
//! The instance stage clusters features `[u, v, w·row, w·col, 100·bin]` (w = 60) of a component's pixels. The
//! spatial part alone bounds the feature distance from below: two pixels at spatial offset (dr, dc) are at least
//! `w·√(dr² + dc²)` apart. So instead of a kd-tree over the 5-d features, the searches walk the component's
//! bounding box outward from the query pixel, in order of increasing spatial offset, and stop as soon as that
//! lower bound reaches the current k-th nearest distance (core distances) or the component's best edge weight
//! (Borůvka). On pixel data this visits a few dozen pixels per query through a plain index image, where a kd-tree
//! descends, tests boxes and scans leaves mostly beyond the answer.
//!
//! **Exactness.** Distances are computed by the same `dist2` as the kd-tree, on the same features, so core
//! distances agree bit for bit. The lower bound is used with a relative slack of 10⁻⁶: with the spatial features
//! equal to `w·row` and `w·col` as computed in f64 and rows and columns below 2²⁴, the computed squared distance
//! exceeds `(1 − 10⁻⁸)·w²·(dr² + dc²)` (rounding of the products, the differences, the squares and the running
//! sum, which only grows), hence strictly exceeds the slackened bound. A point whose bound is not below the
//! current threshold therefore cannot enter or tie, and stopping there is exact.
//!
//! Offsets are visited from a table sorted by length (a disc of radius [`TABLE_RADIUS`]), then, for the rare
//! queries that reach farther (outliers whose flow direction bin differs from all their neighbours'), ring by
//! ring in Chebyshev distance, each ring bounded by its nearest offset.
//!
//! For Borůvka, 8×8 blocks of the bounding box record whether their pixels all lie in one component; a point in
//! such a block is not searched when the nearest block holding another component is too far to beat its
//! component's current best edge (the kd-tree's inside-one-component node flag, on the grid).

use std::sync::OnceLock;

use super::kdtree::{dist2, Knn, KnnRow};
use super::mst::{Points, Round, Space};

/// Radius of the sorted offset table: 3,217 offsets, enough for all but outlier queries on 60-weighted pixels.
const TABLE_RADIUS: i32 = 32;

/// Side of the Borůvka blocks.
const BLOCK: usize = 8;

/// How far (in blocks) the search for a block of another component looks before giving up.
const BLOCK_REACH: usize = 4;

/// Relative slack of the spatial lower bound (see the module doc).
const SLACK: f64 = 1e-6;

/// Rows and columns must stay below this for the rounding argument of the module doc.
pub(super) const MAX_COORDINATE: u32 = 1 << 24;

/// Marks an empty pixel of the index image.
const NO_POINT: u32 = u32::MAX;

/// Block markers: no point, points of several components.
const EMPTY: u32 = u32::MAX;
const MIXED: u32 = u32::MAX - 1;

/// Offsets `(dr, dc, dr² + dc²)` with `dr² + dc² <= TABLE_RADIUS²`, by length, then row, then column.
fn offset_table() -> &'static [(i32, i32, i32)] {
    static TABLE: OnceLock<Vec<(i32, i32, i32)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let r = TABLE_RADIUS;
        let mut table: Vec<(i32, i32, i32)> = (-r..=r)
            .flat_map(|dr| (-r..=r).map(move |dc| (dr, dc, dr * dr + dc * dc)))
            .filter(|&(_, _, len2)| len2 <= r * r)
            .collect();
        table.sort_unstable_by_key(|&(dr, dc, len2)| (len2, dr, dc));
        table
    })
}

/// The points of one component on their bounding box.
pub(super) struct PixelGrid<'p> {
    points: &'p [[f64; 5]],
    /// Each point's (row, column) inside the bounding box.
    at: Vec<(i32, i32)>,
    height: i32,
    width: i32,
    /// Bounding-box pixel → point index, `NO_POINT` if the pixel holds none.
    index: Vec<u32>,
    /// `w²·(1 − SLACK)`: the spatial lower bound of an offset is this times `dr² + dc²`.
    bound_scale: f64,
}

impl<'p> PixelGrid<'p> {
    /// The grid of `points` at `pixels` (row, column); `None` if two points share a pixel or a coordinate
    /// reaches [`MAX_COORDINATE`]. The caller has checked that the spatial features are `w·row`, `w·col`.
    pub fn new(points: &'p [[f64; 5]], pixels: &[(u32, u32)], spatial_weight: f64) -> Option<Self> {
        let top = pixels.iter().map(|p| p.0).min()?;
        let left = pixels.iter().map(|p| p.1).min()?;
        let bottom = pixels.iter().map(|p| p.0).max()?;
        let right = pixels.iter().map(|p| p.1).max()?;
        if bottom >= MAX_COORDINATE || right >= MAX_COORDINATE {
            return None;
        }
        let (height, width) = ((bottom - top + 1) as usize, (right - left + 1) as usize);
        let mut index = vec![NO_POINT; height.checked_mul(width)?];
        let mut at = Vec::with_capacity(pixels.len());
        for (i, &(row, col)) in pixels.iter().enumerate() {
            let (r, c) = ((row - top) as usize, (col - left) as usize);
            let slot = &mut index[r * width + c];
            if *slot != NO_POINT {
                return None;
            }
            *slot = i as u32;
            at.push((r as i32, c as i32));
        }
        let bound_scale = spatial_weight * spatial_weight * (1.0 - SLACK);
        Some(PixelGrid {
            points,
            at,
            height: height as i32,
            width: width as i32,
            index,
            bound_scale,
        })
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// Whether the bounding box is small enough for the grid to pay: at most 32 pixels per point (plus a margin
    /// for tiny components). Thin diagonal components are better served by the kd-tree.
    pub fn is_dense(&self) -> bool {
        self.index.len() <= 32 * self.points.len() + 4096
    }

    /// Point at (row, col) of the bounding box, if any (coordinates may lie outside).
    #[inline(always)]
    fn point_at(&self, row: i32, col: i32) -> Option<usize> {
        if (row as u32) < self.height as u32 && (col as u32) < self.width as u32 {
            let q = self.index[row as usize * self.width as usize + col as usize];
            (q != NO_POINT).then_some(q as usize)
        } else {
            None
        }
    }

    /// Offers to `visitor` every point except those provably at a squared distance of at least
    /// `visitor.threshold()` from point `p`, nearest offsets first.
    #[inline(always)]
    fn scan(&self, p: usize, visitor: &mut impl Visitor) {
        let (row, col) = self.at[p];
        for &(dr, dc, len2) in offset_table() {
            if self.bound_scale * f64::from(len2) >= visitor.threshold() {
                return;
            }
            if let Some(q) = self.point_at(row + dr, col + dc) {
                visitor.visit(q);
            }
        }
        // Beyond the table: Chebyshev rings, skipping the offsets the table covered.
        let covered = i64::from(TABLE_RADIUS * TABLE_RADIUS);
        let reach = row.max(self.height - 1 - row).max(col).max(self.width - 1 - col);
        // Rings up to 0.7·TABLE_RADIUS (< 1/√2 of it) lie inside the table's disc.
        for ring in TABLE_RADIUS * 7 / 10..=reach {
            if self.bound_scale * f64::from(ring) * f64::from(ring) >= visitor.threshold() {
                return;
            }
            let (c0, c1) = ((col - ring).max(0), (col + ring).min(self.width - 1));
            for r in (row - ring).max(0)..=(row + ring).min(self.height - 1) {
                if (r - row).abs() == ring {
                    for c in c0..=c1 {
                        self.visit_beyond_table(row, col, r, c, covered, visitor);
                    }
                } else {
                    self.visit_beyond_table(row, col, r, col - ring, covered, visitor);
                    self.visit_beyond_table(row, col, r, col + ring, covered, visitor);
                }
            }
        }
    }

    /// Visits the point at (r, c), if there is one, the offset table did not cover it and its bound is below the
    /// threshold.
    fn visit_beyond_table(&self, row: i32, col: i32, r: i32, c: i32, covered: i64, visitor: &mut impl Visitor) {
        let (dr, dc) = (i64::from(r - row), i64::from(c - col));
        let len2 = dr * dr + dc * dc;
        if len2 > covered && self.bound_scale * (len2 as f64) < visitor.threshold() {
            if let Some(q) = self.point_at(r, c) {
                visitor.visit(q);
            }
        }
    }

    /// The `k` nearest points (self included) of every point, in the caller's order.
    pub fn knn_all(&self, k: usize) -> Knn {
        let n = self.points.len();
        let mut knn = Knn::new(n, k);
        for p in 0..n {
            let mut nearest = Nearest {
                query: &self.points[p],
                points: self.points,
                row: knn.row(p, f64::INFINITY),
            };
            self.scan(p, &mut nearest);
            knn.complete[p] = nearest.row.finish();
        }
        knn
    }
}

/// What a [`PixelGrid::scan`] feeds.
trait Visitor {
    /// Points at a squared distance of at least this are of no interest (re-read after every visit).
    fn threshold(&self) -> f64;
    fn visit(&mut self, q: usize);
}

/// The k-nearest-neighbour query.
struct Nearest<'a> {
    query: &'a [f64; 5],
    points: &'a [[f64; 5]],
    row: KnnRow<'a>,
}

impl Visitor for Nearest<'_> {
    #[inline(always)]
    fn threshold(&self) -> f64 {
        self.row.worst()
    }

    #[inline(always)]
    fn visit(&mut self, q: usize) {
        self.row.offer(dist2(self.query, &self.points[q]), q as u32);
    }
}

/// The grid as a Borůvka [`Space`]: the bounding box cut into `BLOCK`×`BLOCK` blocks, the points of each block
/// split further into leaves of at most [`LEAF`] points along their widest feature axis, each leaf with the 5-d
/// bounding box, the smallest core distance and (per round) the component of its points. Leaves are pruned like
/// kd-tree nodes, on every feature axis: in the last rounds the lightest edges are heavy (objects, or interleaved
/// layers of one object whose flow direction straddles a bin border, differ by whole direction bins), and a
/// spatial bound alone would scan far around every point.
pub(super) struct GridSpace<'g, 'p> {
    grid: &'g PixelGrid<'p>,
    blocks_high: usize,
    blocks_wide: usize,
    /// The leaves of block `b` are `block_leaves[b]..block_leaves[b + 1]`.
    block_leaves: Vec<u32>,
    leaves: Vec<Leaf>,
    /// Points grouped by leaf.
    leaf_points: Vec<u32>,
    /// Per leaf: its only component or `MIXED`.
    leaf_comp: Vec<u32>,
    /// Per block: its only component, `EMPTY` or `MIXED`.
    block_comp: Vec<u32>,
    /// Per block whose points lie in one component: a lower bound on the squared feature distance from any of
    /// them to any point of another component (0 for other blocks).
    block_clearance2: Vec<f64>,
}

/// Largest number of points in a leaf.
const LEAF: usize = 8;

/// Points `start..end` of `leaf_points`, their bounding box and smallest squared core distance.
struct Leaf {
    start: u32,
    end: u32,
    bounds: Box5,
    min_core2: f64,
}

/// Per-axis bounds of some points' features.
#[derive(Clone, Copy)]
struct Box5 {
    lo: [f64; 5],
    hi: [f64; 5],
}

impl Box5 {
    fn of(points: &[[f64; 5]], ids: &[u32]) -> Self {
        let mut bounds = Box5 {
            lo: [f64::INFINITY; 5],
            hi: [f64::NEG_INFINITY; 5],
        };
        for &i in ids {
            for ((lo, hi), &x) in bounds.lo.iter_mut().zip(&mut bounds.hi).zip(&points[i as usize]) {
                *lo = lo.min(x);
                *hi = hi.max(x);
            }
        }
        bounds
    }

    /// Squared distance from `p` to the box, a lower bound on its distance to every point inside as computed by
    /// `dist2` (each term is bounded termwise, and rounding is monotone).
    #[inline(always)]
    fn dist2(&self, p: &[f64; 5]) -> f64 {
        let mut sum = 0.0;
        for ((&lo, &hi), &x) in self.lo.iter().zip(&self.hi).zip(p) {
            let gap = (lo - x).max(x - hi).max(0.0);
            sum += gap * gap;
        }
        sum
    }
}

/// Splits `ids` (all in `leaf_points` from `offset`) into leaves of at most `LEAF` points by median splits along
/// the widest axis; ties ordered by index, so the leaves are a function of the input.
fn split_leaves(points: &[[f64; 5]], core2: &[f64], ids: &mut [u32], offset: usize, leaves: &mut Vec<Leaf>) {
    let bounds = Box5::of(points, ids);
    let widest = (0..5).max_by(|&a, &b| (bounds.hi[a] - bounds.lo[a]).total_cmp(&(bounds.hi[b] - bounds.lo[b])));
    let widest = widest.unwrap_or(0);
    if ids.len() <= LEAF || bounds.hi[widest] <= bounds.lo[widest] {
        let min_core2 = ids.iter().map(|&i| core2[i as usize]).fold(f64::INFINITY, f64::min);
        let (start, end) = (offset as u32, (offset + ids.len()) as u32);
        leaves.push(Leaf {
            start,
            end,
            bounds,
            min_core2,
        });
        return;
    }
    let half = ids.len() / 2;
    ids.select_nth_unstable_by(half, |&a, &b| {
        points[a as usize][widest]
            .total_cmp(&points[b as usize][widest])
            .then(a.cmp(&b))
    });
    let (left, right) = ids.split_at_mut(half);
    split_leaves(points, core2, left, offset, leaves);
    split_leaves(points, core2, right, offset + half, leaves);
}

impl<'g, 'p> GridSpace<'g, 'p> {
    pub fn new(grid: &'g PixelGrid<'p>, core2: &[f64]) -> Self {
        let blocks_high = (grid.height as usize).div_ceil(BLOCK);
        let blocks_wide = (grid.width as usize).div_ceil(BLOCK);
        let count = blocks_high * blocks_wide;
        let block_of = |p: usize| {
            let (row, col) = grid.at[p];
            (row as usize / BLOCK) * blocks_wide + col as usize / BLOCK
        };
        let mut block_start = vec![0usize; count + 1];
        for p in 0..grid.len() {
            block_start[block_of(p) + 1] += 1;
        }
        for b in 0..count {
            block_start[b + 1] += block_start[b];
        }
        let mut fill = block_start.clone();
        let mut leaf_points = vec![0u32; grid.len()];
        for p in 0..grid.len() {
            let b = block_of(p);
            leaf_points[fill[b]] = p as u32;
            fill[b] += 1;
        }
        let mut leaves = Vec::with_capacity(grid.len() / (LEAF / 2) + count);
        let mut block_leaves = Vec::with_capacity(count + 1);
        for b in 0..count {
            block_leaves.push(leaves.len() as u32);
            let range = block_start[b]..block_start[b + 1];
            if !range.is_empty() {
                split_leaves(
                    grid.points,
                    core2,
                    &mut leaf_points[range.clone()],
                    range.start,
                    &mut leaves,
                );
            }
        }
        block_leaves.push(leaves.len() as u32);
        GridSpace {
            grid,
            blocks_high,
            blocks_wide,
            block_leaves,
            leaf_comp: vec![MIXED; leaves.len()],
            leaves,
            leaf_points,
            block_comp: vec![EMPTY; count],
            block_clearance2: vec![0.0; count],
        }
    }

    fn block_of(&self, p: usize) -> usize {
        let (row, col) = self.grid.at[p];
        (row as usize / BLOCK) * self.blocks_wide + col as usize / BLOCK
    }

    /// Offers the edges from `p` into block `b` that may beat the component's best.
    #[inline(always)]
    fn visit_block(&self, b: usize, p: usize, c: u32, query: &[f64; 5], points: &Points<'_>, round: &mut Round) {
        let own = self.block_comp[b];
        if own == c || own == EMPTY {
            return;
        }
        let core_p = points.core2[p];
        for leaf_id in self.block_leaves[b] as usize..self.block_leaves[b + 1] as usize {
            let leaf = &self.leaves[leaf_id];
            let best = round.best_weight2[c as usize];
            if self.leaf_comp[leaf_id] == c || leaf.min_core2 > best || leaf.bounds.dist2(query) > best {
                continue;
            }
            for &q in &self.leaf_points[leaf.start as usize..leaf.end as usize] {
                let q = q as usize;
                let core_q = points.core2[q];
                if round.comp[q] == c || core_q > round.best_weight2[c as usize] {
                    continue;
                }
                let d2 = dist2(query, &self.grid.points[q]);
                round.offer(points, c, p, q, d2.max(core_p).max(core_q), d2);
            }
        }
    }
}

impl Space for GridSpace<'_, '_> {
    fn refresh(&mut self, comp: &[u32]) {
        for (leaf, slot) in self.leaves.iter().zip(&mut self.leaf_comp) {
            let ids = &self.leaf_points[leaf.start as usize..leaf.end as usize];
            let first = comp[ids[0] as usize];
            *slot = if ids.iter().all(|&q| comp[q as usize] == first) {
                first
            } else {
                MIXED
            };
        }
        for (b, slot) in self.block_comp.iter_mut().enumerate() {
            let leaves = &self.leaf_comp[self.block_leaves[b] as usize..self.block_leaves[b + 1] as usize];
            *slot = match leaves.first() {
                None => EMPTY,
                Some(&first) if leaves.iter().all(|&c| c == first) => first,
                Some(_) => MIXED,
            };
        }
        let (wide, high) = (self.blocks_wide as i64, self.blocks_high as i64);
        for block in 0..self.block_comp.len() {
            let own = self.block_comp[block];
            self.block_clearance2[block] = 0.0;
            if own == EMPTY || own == MIXED {
                continue;
            }
            let (br, bc) = (block as i64 / wide, block as i64 % wide);
            // Smallest Chebyshev block distance to a block holding another component, capped.
            let foreign = (1..=BLOCK_REACH as i64)
                .find(|&d| {
                    ((br - d).max(0)..=(br + d).min(high - 1)).any(|r| {
                        ((bc - d).max(0)..=(bc + d).min(wide - 1)).any(|c| {
                            let other = self.block_comp[(r * wide + c) as usize];
                            other != EMPTY && other != own
                        })
                    })
                })
                .unwrap_or(BLOCK_REACH as i64 + 1);
            // Pixels in blocks `foreign` apart are at least (foreign − 1)·BLOCK + 1 apart in rows or columns.
            let gap = ((foreign - 1) as usize * BLOCK + 1) as f64;
            self.block_clearance2[block] = self.grid.bound_scale * gap * gap;
        }
    }

    fn search(&self, p: usize, points: &Points<'_>, round: &mut Round) {
        let c = round.comp[p];
        if self.block_clearance2[self.block_of(p)] >= round.best_weight2[c as usize] {
            return;
        }
        let query = &self.grid.points[p];
        let (row, col) = self.grid.at[p];
        let (br, bc) = ((row as usize / BLOCK) as i64, (col as usize / BLOCK) as i64);
        let (wide, high) = (self.blocks_wide as i64, self.blocks_high as i64);
        let reach = br.max(high - 1 - br).max(bc).max(wide - 1 - bc);
        // Blocks in ring k ≥ 1 around p's block are at least (k − 1)·BLOCK + 1 pixels away in rows or columns.
        for ring in 0..=reach {
            if round.done(points, c, p) {
                return;
            }
            let gap = if ring == 0 {
                0.0
            } else {
                ((ring - 1) as usize * BLOCK + 1) as f64
            };
            if self.grid.bound_scale * gap * gap >= round.best_weight2[c as usize] {
                return;
            }
            let (c0, c1) = ((bc - ring).max(0), (bc + ring).min(wide - 1));
            for r in (br - ring).max(0)..=(br + ring).min(high - 1) {
                if (r - br).abs() == ring {
                    for b in c0..=c1 {
                        self.visit_block((r * wide + b) as usize, p, c, query, points, round);
                    }
                } else {
                    for b in [bc - ring, bc + ring] {
                        if (0..wide).contains(&b) {
                            self.visit_block((r * wide + b) as usize, p, c, query, points, round);
                        }
                    }
                }
            }
        }
    }
}
