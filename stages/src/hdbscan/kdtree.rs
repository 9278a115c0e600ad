//! A static kd-tree over the input points, and the exact k-nearest-neighbour query that gives the core distances.
//!
//! The points are copied into tree order (every node owns a contiguous range), so that the leaf scans of the
//! neighbour query and of the Borůvka search read memory sequentially. All distances here are *squared*
//! Euclidean distances: the square root is monotone and correctly rounded, so comparisons and maxima taken in
//! squared space give exactly the same answers as in distance space, and it is taken once, on the final edges.

/// Largest number of points in a leaf (leaves hold 8–16 points). Chosen by instruction counts on 10k and 50k
/// pixel-component inputs: 8 is 8 % slower, 16 and 32 are within 1 % of each other.
const LEAF_SIZE: usize = 16;

/// Marks a node without children.
const NO_CHILD: u32 = u32::MAX;

/// Marks an unfilled neighbour slot.
const NO_POINT: u32 = u32::MAX;

pub(super) struct Node<const D: usize> {
    /// Bounding box of the node's points (per coordinate minimum and maximum).
    pub lo: [f64; D],
    pub hi: [f64; D],
    /// The node's points are `start..end` in tree order.
    pub start: u32,
    pub end: u32,
    /// Child node indices, `NO_CHILD` for a leaf.
    pub left: u32,
    pub right: u32,
}

impl<const D: usize> Node<D> {
    pub fn is_leaf(&self) -> bool {
        self.left == NO_CHILD
    }

    pub fn range(&self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }

    /// Squared distance from `p` to the closest point of the bounding box (0 inside).
    #[inline(always)]
    pub fn box_dist2(&self, p: &[f64; D]) -> f64 {
        let mut sum = 0.0;
        for ((&lo, &hi), &x) in self.lo.iter().zip(&self.hi).zip(p) {
            let gap = (lo - x).max(x - hi).max(0.0);
            sum += gap * gap;
        }
        sum
    }
}

pub(super) struct KdTree<const D: usize> {
    /// The points in tree order.
    pub points: Vec<[f64; D]>,
    /// `original[i]` is the caller's index of the point at tree position `i`.
    pub original: Vec<u32>,
    /// Node 0 is the root; children always have larger indices than their parent.
    pub nodes: Vec<Node<D>>,
}

#[inline(always)]
pub(super) fn dist2<const D: usize>(a: &[f64; D], b: &[f64; D]) -> f64 {
    let mut sum = 0.0;
    for d in 0..D {
        let diff = a[d] - b[d];
        sum += diff * diff;
    }
    sum
}

impl<const D: usize> KdTree<D> {
    /// Builds the tree by median splits along the widest box side. Ties in the split coordinate are ordered by
    /// the caller's index, so the tree (and everything computed on it) is a pure function of the input.
    pub fn build(points: &[[f64; D]], original_index: Vec<u32>) -> Self {
        let mut order = original_index;
        let mut nodes = Vec::with_capacity(2 * points.len() / LEAF_SIZE + 2);
        if !order.is_empty() {
            build_node(points, &mut order, 0, &mut nodes);
        }
        let tree_points = order.iter().map(|&i| points[i as usize]).collect();
        KdTree {
            points: tree_points,
            original: order,
            nodes,
        }
    }

    /// For every point (in tree order), its `k` nearest points, the point itself included (`k <= n`).
    pub fn knn_all(&self, k: usize) -> Knn {
        let n = self.points.len();
        let mut knn = Knn::new(n, k);
        for p in 0..n {
            // Neighbouring points in tree order are close: by the triangle inequality the previous point's k-th
            // distance plus the distance between the two bounds this point's k-th distance from above, which
            // prunes the search from its start. The relative and absolute slack keep every point at exactly the
            // k-th distance (possibly 0, for duplicates) strictly inside the bound despite rounding; should a row
            // still not fill up, it is searched again without a bound, so the result is always exact.
            let start = if p > 0 {
                let previous_kth = knn.dist2[(p - 1) * k].sqrt();
                let bound = previous_kth + dist2(&self.points[p - 1], &self.points[p]).sqrt();
                bound * bound * (1.0 + 1e-9) + f64::MIN_POSITIVE
            } else {
                f64::INFINITY
            };
            let mut row = knn.row(p, start);
            self.knn_visit(0, &self.points[p], &mut row);
            if !row.is_full() {
                row = knn.row(p, f64::INFINITY);
                self.knn_visit(0, &self.points[p], &mut row);
            }
            knn.complete[p] = row.finish();
        }
        knn
    }

    fn knn_visit(&self, node_id: usize, p: &[f64; D], row: &mut KnnRow<'_>) {
        let node = &self.nodes[node_id];
        if node.is_leaf() {
            if node.lo == node.hi {
                // A stack of identical points (the only leaves that can be large): all at the same distance, so
                // at most k of them can enter.
                let d2 = node.box_dist2(p);
                for q in node.range() {
                    if d2 >= row.worst() {
                        row.skip(d2);
                        break;
                    }
                    row.offer(d2, q as u32);
                }
                return;
            }
            for q in node.range() {
                row.offer(dist2(p, &self.points[q]), q as u32);
            }
            return;
        }
        let (left, right) = (node.left as usize, node.right as usize);
        let left_d2 = self.nodes[left].box_dist2(p);
        let right_d2 = self.nodes[right].box_dist2(p);
        let (near, near_d2, far, far_d2) = if left_d2 <= right_d2 {
            (left, left_d2, right, right_d2)
        } else {
            (right, right_d2, left, left_d2)
        };
        for (child, child_d2) in [(near, near_d2), (far, far_d2)] {
            if child_d2 < row.worst() {
                self.knn_visit(child, p, row);
            } else {
                row.skip(child_d2);
            }
        }
    }
}

/// The k nearest neighbours of every point, self included, as `k`-long rows. A row is a max-heap on the squared
/// distance: element 0 is the k-th nearest distance (the squared core distance), the rest is unordered. Among
/// equal distances any point may be kept: the distances are exact, the ids are valid candidate edges.
pub(super) struct Knn {
    pub k: usize,
    pub dist2: Vec<f64>,
    pub ids: Vec<u32>,
    /// Whether the row holds *every* point at a distance up to its k-th distance (false when some point at
    /// exactly that distance was left out). The MST search relies on complete rows to skip tied candidates.
    pub complete: Vec<bool>,
}

impl Knn {
    pub fn new(n: usize, k: usize) -> Self {
        Knn {
            k,
            dist2: vec![f64::INFINITY; n * k],
            ids: vec![NO_POINT; n * k],
            complete: vec![false; n],
        }
    }

    /// The squared core distances: each row's k-th nearest distance.
    pub fn core2(&self) -> Vec<f64> {
        self.dist2.chunks_exact(self.k).map(|row| row[0]).collect()
    }

    /// Row `p`, reset so that only points nearer than `start` (squared) can enter.
    pub fn row(&mut self, p: usize, start: f64) -> KnnRow<'_> {
        let range = p * self.k..(p + 1) * self.k;
        self.dist2[range.clone()].fill(start);
        self.ids[range.clone()].fill(NO_POINT);
        KnnRow {
            dist2: &mut self.dist2[range.clone()],
            id: &mut self.ids[range],
            last_tie: f64::NAN,
        }
    }
}

/// One point's neighbour list as a binary max-heap on the squared distance (k is small: min_samples + 1).
pub(super) struct KnnRow<'a> {
    dist2: &'a mut [f64],
    id: &'a mut [u32],
    /// The last `worst()` at which a point was left out at exactly that distance (evicted, rejected or pruned
    /// with it). `worst()` only decreases, so the row is complete iff this differs from the final k-th distance.
    last_tie: f64,
}

impl KnnRow<'_> {
    #[inline(always)]
    pub fn worst(&self) -> f64 {
        self.dist2[0]
    }

    /// Considers the point `id` at squared distance `d2`.
    #[inline(always)]
    pub fn offer(&mut self, d2: f64, id: u32) {
        let worst = self.worst();
        if d2 < worst {
            self.insert(d2, id);
            if self.worst() == worst {
                self.last_tie = worst;
            }
        } else if d2 == worst {
            self.last_tie = worst;
        }
    }

    /// Records that points at squared distance `d2` or more were not looked at.
    #[inline(always)]
    pub fn skip(&mut self, d2: f64) {
        if d2 == self.worst() {
            self.last_tie = d2;
        }
    }

    pub fn is_full(&self) -> bool {
        !self.id.contains(&NO_POINT)
    }

    /// Whether the row is complete (see [`Knn::complete`]).
    pub fn finish(self) -> bool {
        self.last_tie != self.worst()
    }

    /// Replaces the farthest neighbour by `(d2, id)`, which must be nearer.
    #[inline(always)]
    fn insert(&mut self, d2: f64, id: u32) {
        let len = self.dist2.len();
        let mut slot = 0;
        loop {
            let left = 2 * slot + 1;
            if left >= len {
                break;
            }
            let right = left + 1;
            let child = if right < len && self.dist2[right] > self.dist2[left] {
                right
            } else {
                left
            };
            if self.dist2[child] <= d2 {
                break;
            }
            self.dist2[slot] = self.dist2[child];
            self.id[slot] = self.id[child];
            slot = child;
        }
        self.dist2[slot] = d2;
        self.id[slot] = id;
    }
}

fn build_node<const D: usize>(points: &[[f64; D]], order: &mut [u32], start: usize, nodes: &mut Vec<Node<D>>) -> u32 {
    let mut lo = [f64::INFINITY; D];
    let mut hi = [f64::NEG_INFINITY; D];
    for &i in order.iter() {
        let p = &points[i as usize];
        for d in 0..D {
            lo[d] = lo[d].min(p[d]);
            hi[d] = hi[d].max(p[d]);
        }
    }
    let id = nodes.len();
    let end = start + order.len();
    nodes.push(Node {
        lo,
        hi,
        start: start as u32,
        end: end as u32,
        left: NO_CHILD,
        right: NO_CHILD,
    });

    let mut widest = 0;
    for d in 1..D {
        if hi[d] - lo[d] > hi[widest] - lo[widest] {
            widest = d;
        }
    }
    // A node of identical points cannot be split usefully, whatever its size. Its points are kept in the
    // caller's order: the Borůvka search relies on it to find a stack's best edge at its first foreign member.
    if hi[widest] - lo[widest] <= 0.0 {
        order.sort_unstable();
        return id as u32;
    }
    if order.len() <= LEAF_SIZE {
        return id as u32;
    }
    let half = order.len() / 2;
    order.select_nth_unstable_by(half, |&a, &b| {
        points[a as usize][widest]
            .total_cmp(&points[b as usize][widest])
            .then(a.cmp(&b))
    });
    let (left_part, right_part) = order.split_at_mut(half);
    let left = build_node(points, left_part, start, nodes);
    let right = build_node(points, right_part, start + half, nodes);
    nodes[id].left = left;
    nodes[id].right = right;
    id as u32
}
