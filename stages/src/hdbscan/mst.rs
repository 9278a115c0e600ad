//! Exact minimum spanning tree of the mutual-reachability graph by Borůvka rounds.
//!
//! Each round finds, for every current component, its lightest leaving edge, then merges along those edges. The
//! round structure is shared; the search for the lightest edges is done by a [`Space`]: the kd-tree here (any
//! points), or the pixel grid of `grid.rs` (pixels of one image component). The search for component `c` runs
//! point by point with one bound shared by the whole component (the lightest edge found so far). The
//! k-nearest-neighbour lists from the core-distance query seed the bounds at the start of every round.
//!
//! **A unique tree.** Edges are compared by `(weight, distance, smaller index, larger index)`: mutual-reachability
//! weight, then the plain feature distance, then the caller's point indices. That is a strict total order, so the
//! minimum spanning tree under it is unique, Borůvka with it never closes a cycle, and every `Space` — whatever it
//! visits first — returns that same tree. Preferring the nearer pair among equal weights keeps the tree
//! meaningful where weights tie massively: with `min_samples = 30` on pixels, core distances of 60·√10 swamp flow
//! steps of several pixels, and only the plain distance still tells same-flow neighbours from a flow edge. Hence
//! the kd-tree and the pixel grid give identical labels even on pixel data full of equal weights, and the labels
//! do not depend on the order of the input rows. Keeping the order exact costs little: a point's own lightest edges
//! weigh its core distance and lie in its neighbour list, which is seeded in full; a point is searched again only
//! if a lighter edge may exist, or an equally light one was left out of an incomplete list ([`Knn::complete`]).

use super::kdtree::{dist2, KdTree, Knn};

/// One MST edge between positions `a` and `b` (the `Space`'s order), with its squared mutual-reachability
/// distance and its squared feature distance.
#[derive(Clone, Copy, Debug)]
pub(super) struct Edge {
    pub a: u32,
    pub b: u32,
    pub weight2: f64,
    pub dist2: f64,
}

/// What the searches read: squared core distances, neighbour-list completeness and the caller's index of each
/// position (which makes the tie order).
pub(super) struct Points<'a> {
    pub core2: &'a [f64],
    pub complete: &'a [bool],
    pub original: &'a [u32],
}

impl Points<'_> {
    #[inline(always)]
    fn key(&self, p: usize, q: usize) -> u64 {
        let (a, b) = (self.original[p], self.original[q]);
        (u64::from(a.min(b)) << 32) | u64::from(a.max(b))
    }

    /// Whether edges from `p` lighter than `(best_weight2, …)`, or equal with a smaller key, may exist outside
    /// what seeding from p's neighbour list has already offered.
    #[inline(always)]
    fn needs_search(&self, p: usize, best_weight2: f64) -> bool {
        let core_p = self.core2[p];
        core_p < best_weight2 || (core_p == best_weight2 && !self.complete[p])
    }
}

/// Per-round state: every point's component (its union-find root) and each component's best edge so far.
pub(super) struct Round {
    pub comp: Vec<u32>,
    pub best_weight2: Vec<f64>,
    best_dist2: Vec<f64>,
    best_key: Vec<u64>,
    best_edge: Vec<(u32, u32)>,
}

impl Round {
    /// Offers the edge `p`–`q` (p in component `c`) of squared weight `weight2` and squared distance `dist2`.
    #[inline(always)]
    pub fn offer(&mut self, points: &Points<'_>, c: u32, p: usize, q: usize, weight2: f64, dist2: f64) {
        let c = c as usize;
        if weight2 > self.best_weight2[c] {
            return;
        }
        if weight2 == self.best_weight2[c]
            && (dist2 > self.best_dist2[c] || (dist2 == self.best_dist2[c] && points.key(p, q) >= self.best_key[c]))
        {
            return;
        }
        self.best_weight2[c] = weight2;
        self.best_dist2[c] = dist2;
        self.best_key[c] = points.key(p, q);
        self.best_edge[c] = (p as u32, q as u32);
    }

    /// Whether the search from `p` (in component `c`) can end: nothing at p can beat the current best.
    #[inline(always)]
    pub fn done(&self, points: &Points<'_>, c: u32, p: usize) -> bool {
        !points.needs_search(p, self.best_weight2[c as usize])
    }
}

/// A structure that finds, for one point, the edges to other components that may beat the component's best.
pub(super) trait Space {
    /// Called before the first round and after every round's merges, with the new components.
    fn refresh(&mut self, comp: &[u32]);
    /// Offers to `round` every edge from `p` that may be lighter than its component's best edge (or as light,
    /// with a smaller key). Only called when [`Points::needs_search`] holds.
    fn search(&self, p: usize, points: &Points<'_>, round: &mut Round);
}

pub(super) struct UnionFind {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl UnionFind {
    pub fn new(n: usize) -> Self {
        UnionFind {
            parent: (0..n as u32).collect(),
            size: vec![1; n],
        }
    }

    pub fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let grand = self.parent[self.parent[x as usize] as usize];
            self.parent[x as usize] = grand;
            x = grand;
        }
        x
    }

    /// Merges the sets of `a` and `b`; false if they were already one set.
    pub fn union(&mut self, a: u32, b: u32) -> bool {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return false;
        }
        let (big, small) = if self.size[ra as usize] >= self.size[rb as usize] {
            (ra, rb)
        } else {
            (rb, ra)
        };
        self.parent[small as usize] = big;
        self.size[big as usize] += self.size[small as usize];
        true
    }
}

/// Minimum spanning tree (n − 1 edges, in the order found) of the complete graph on the space's points with
/// weights `max(d², core²[a], core²[b])`, unique under the order described in the module doc. `knn` holds the
/// neighbour rows in the space's order.
pub(super) fn minimum_spanning_tree<S: Space>(space: &mut S, points: &Points<'_>, knn: &Knn) -> Vec<Edge> {
    let n = points.core2.len();
    let mut edges = Vec::with_capacity(n.saturating_sub(1));
    if n < 2 {
        return edges;
    }
    let mut round = Round {
        comp: (0..n as u32).collect(),
        best_weight2: vec![f64::INFINITY; n],
        best_dist2: vec![f64::INFINITY; n],
        best_key: vec![u64::MAX; n],
        best_edge: vec![(0, 0); n],
    };
    let mut union_find = UnionFind::new(n);
    let mut exhausted = vec![false; n];
    space.refresh(&round.comp);
    while edges.len() + 1 < n {
        round.best_weight2.fill(f64::INFINITY);
        round.best_key.fill(u64::MAX);
        seed_from_neighbours(points, knn, &mut round, &mut exhausted);
        for p in 0..n {
            let c = round.comp[p];
            if points.needs_search(p, round.best_weight2[c as usize]) {
                space.search(p, points, &mut round);
            }
        }
        for c in 0..n {
            if round.comp[c] as usize != c || round.best_weight2[c] == f64::INFINITY {
                continue;
            }
            let (a, b) = round.best_edge[c];
            if union_find.union(a, b) {
                edges.push(Edge {
                    a,
                    b,
                    weight2: round.best_weight2[c],
                    dist2: round.best_dist2[c],
                });
            }
        }
        for p in 0..n {
            round.comp[p] = union_find.find(p as u32);
        }
        space.refresh(&round.comp);
    }
    edges
}

/// Offers every neighbour-list edge that may matter (cheap, and often already optimal: no edge at p can be
/// lighter than its core distance, and with a complete list all edges of exactly that weight are in it).
/// Rows whose neighbours have all joined the point's component are marked in `exhausted` (components only grow)
/// and skipped from then on.
fn seed_from_neighbours(points: &Points<'_>, knn: &Knn, round: &mut Round, exhausted: &mut [bool]) {
    let k = knn.k;
    for (p, done) in exhausted.iter_mut().enumerate() {
        let c = round.comp[p];
        let core_p = points.core2[p];
        if *done || core_p > round.best_weight2[c as usize] {
            continue;
        }
        let row = p * k..(p + 1) * k;
        let mut foreign = false;
        for (&d2, &q) in knn.dist2[row.clone()].iter().zip(&knn.ids[row]) {
            if round.comp[q as usize] == c {
                continue;
            }
            foreign = true;
            let weight2 = d2.max(core_p).max(points.core2[q as usize]);
            round.offer(points, c, p, q as usize, weight2, d2);
        }
        *done = !foreign;
    }
}

/// Marks a node whose points belong to more than one component.
const MIXED: u32 = u32::MAX;

/// The kd-tree as a [`Space`]: per-node flags for nodes that lie inside one component, and per-node minimum
/// core distances, prune the search for the lightest leaving edge.
pub(super) struct KdSpace<'t, const D: usize> {
    tree: &'t KdTree<D>,
    node_min_core2: Vec<f64>,
    node_comp: Vec<u32>,
}

impl<'t, const D: usize> KdSpace<'t, D> {
    pub fn new(tree: &'t KdTree<D>, core2: &[f64]) -> Self {
        let mut node_min_core2 = vec![f64::INFINITY; tree.nodes.len()];
        for (id, node) in tree.nodes.iter().enumerate().rev() {
            node_min_core2[id] = if node.is_leaf() {
                core2[node.range()].iter().copied().fold(f64::INFINITY, f64::min)
            } else {
                node_min_core2[node.left as usize].min(node_min_core2[node.right as usize])
            };
        }
        KdSpace {
            tree,
            node_min_core2,
            node_comp: vec![MIXED; tree.nodes.len()],
        }
    }
}

impl<const D: usize> Space for KdSpace<'_, D> {
    /// Recomputes, bottom-up, which nodes lie entirely inside one component.
    fn refresh(&mut self, comp: &[u32]) {
        for (id, node) in self.tree.nodes.iter().enumerate().rev() {
            self.node_comp[id] = if node.is_leaf() {
                let range = node.range();
                let first = comp[range.start];
                if comp[range].iter().all(|&c| c == first) {
                    first
                } else {
                    MIXED
                }
            } else {
                let left = self.node_comp[node.left as usize];
                if left == self.node_comp[node.right as usize] {
                    left
                } else {
                    MIXED
                }
            };
        }
    }

    fn search(&self, p: usize, points: &Points<'_>, round: &mut Round) {
        let c = round.comp[p];
        self.visit(0, p, c, points, round);
    }
}

impl<const D: usize> KdSpace<'_, D> {
    fn visit(&self, node_id: usize, p: usize, c: u32, points: &Points<'_>, round: &mut Round) {
        let tree = self.tree;
        let node = &tree.nodes[node_id];
        let query = &tree.points[p];
        let core_p = points.core2[p];
        if node.is_leaf() {
            // In a stack of identical points (kept in the caller's order) every member has the same features,
            // hence the same core distance: all edges into it tie but for the index, so the first member outside
            // `c` is the best one.
            let stack = node.lo == node.hi;
            for q in node.range() {
                let core_q = points.core2[q];
                if round.comp[q] == c || core_q > round.best_weight2[c as usize] {
                    continue;
                }
                let d2 = dist2(query, &tree.points[q]);
                round.offer(points, c, p, q, d2.max(core_p).max(core_q), d2);
                if stack {
                    return;
                }
            }
            return;
        }
        let (left, right) = (node.left as usize, node.right as usize);
        let left_bound = self.lower_bound(left, query, c).max(core_p);
        let right_bound = self.lower_bound(right, query, c).max(core_p);
        let (near, near_bound, far, far_bound) = if left_bound <= right_bound {
            (left, left_bound, right, right_bound)
        } else {
            (right, right_bound, left, left_bound)
        };
        for (child, bound) in [(near, near_bound), (far, far_bound)] {
            if bound <= round.best_weight2[c as usize] && !round.done(points, c, p) {
                self.visit(child, p, c, points, round);
            }
        }
    }

    /// Lower bound on the weight of any edge from `query` into the node, apart from the query's own core
    /// distance; infinite if the node is inside `c`.
    #[inline(always)]
    fn lower_bound(&self, node_id: usize, query: &[f64; D], c: u32) -> f64 {
        if self.node_comp[node_id] == c {
            return f64::INFINITY;
        }
        self.tree.nodes[node_id]
            .box_dist2(query)
            .max(self.node_min_core2[node_id])
    }
}
