//! Exact minimum spanning tree of the mutual-reachability graph by Borůvka rounds over the kd-tree.
//!
//! Each round finds, for every current component, one lightest edge leaving it, then merges along those edges.
//! The search for component `c` runs point by point with one bound shared by the whole component (the lightest
//! edge found so far), so after the first few points most of the tree is pruned by
//! * the node being entirely inside `c` (per-node component flag, refreshed after every round),
//! * the lower bound `max(core²[p], box distance², min core² of the node)` not being below the bound.
//!
//! The k-nearest-neighbour lists from the core-distance query seed the bounds at the start of every round.
//!
//! **Exactness with ties.** Pruning keeps the first edge of minimal weight found, so equal-weight edges are chosen
//! arbitrarily (but deterministically: the visiting order is fixed). The chosen edges are added through a
//! union-find that drops any edge closing a cycle. This gives a minimum spanning tree: the chosen edges form, in
//! every merged group, one cycle at most, made of equal-weight edges; dropping one edge of it leaves a tree in
//! which every non-root component hangs on one of its own lightest leaving edges, and perturbing the weights so
//! that deeper edges are lighter makes each of those the strict minimum of its cut, hence part of the (now
//! unique) MST of the perturbed graph, which is also an MST of the original graph. The total weight is therefore
//! always the exact minimum; only which of several equal-weight trees is returned depends on the visiting order.

use super::kdtree::{dist2, KdTree};

/// One MST edge between tree positions `a` and `b`, with its squared mutual-reachability distance.
#[derive(Clone, Copy, Debug)]
pub(super) struct Edge {
    pub a: u32,
    pub b: u32,
    pub weight2: f64,
}

/// Marks a node whose points belong to more than one component.
const MIXED: u32 = u32::MAX;

pub(super) struct UnionFind {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl UnionFind {
    pub fn new(n: usize) -> Self {
        UnionFind { parent: (0..n as u32).collect(), size: vec![1; n] }
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
        let (big, small) = if self.size[ra as usize] >= self.size[rb as usize] { (ra, rb) } else { (rb, ra) };
        self.parent[small as usize] = big;
        self.size[big as usize] += self.size[small as usize];
        true
    }
}

/// Mutable search state of one Borůvka run. Arrays indexed by a component are indexed by its union-find root.
struct Boruvka<'t, const D: usize> {
    tree: &'t KdTree<D>,
    core2: &'t [f64],
    node_min_core2: Vec<f64>,
    node_comp: Vec<u32>,
    comp: Vec<u32>,
    best_weight2: Vec<f64>,
    best_edge: Vec<(u32, u32)>,
}

/// Minimum spanning tree (n − 1 edges, in the order found) of the complete graph on the tree's points with
/// weights `max(d², core²[a], core²[b])`. `knn_dist2`/`knn_ids` are the rows of [`KdTree::knn_all`] (`k` per point).
pub(super) fn minimum_spanning_tree<const D: usize>(
    tree: &KdTree<D>,
    core2: &[f64],
    knn_dist2: &[f64],
    knn_ids: &[u32],
    k: usize,
) -> Vec<Edge> {
    let n = tree.points.len();
    let mut edges = Vec::with_capacity(n.saturating_sub(1));
    if n < 2 {
        return edges;
    }
    let mut node_min_core2 = vec![f64::INFINITY; tree.nodes.len()];
    for (id, node) in tree.nodes.iter().enumerate().rev() {
        node_min_core2[id] = if node.is_leaf() {
            core2[node.range()].iter().copied().fold(f64::INFINITY, f64::min)
        } else {
            node_min_core2[node.left as usize].min(node_min_core2[node.right as usize])
        };
    }
    let mut state = Boruvka {
        tree,
        core2,
        node_min_core2,
        node_comp: vec![MIXED; tree.nodes.len()],
        comp: (0..n as u32).collect(),
        best_weight2: vec![f64::INFINITY; n],
        best_edge: vec![(0, 0); n],
    };
    let mut union_find = UnionFind::new(n);
    state.refresh_node_components();

    while edges.len() + 1 < n {
        state.best_weight2.fill(f64::INFINITY);
        state.seed_from_neighbours(knn_dist2, knn_ids, k);
        for (p, &core_p) in core2.iter().enumerate() {
            let c = state.comp[p];
            if core_p < state.best_weight2[c as usize] {
                state.search(0, p, c);
            }
        }
        for c in 0..n {
            if state.comp[c] as usize != c || state.best_weight2[c] == f64::INFINITY {
                continue;
            }
            let (a, b) = state.best_edge[c];
            if union_find.union(a, b) {
                edges.push(Edge { a, b, weight2: state.best_weight2[c] });
            }
        }
        for p in 0..n {
            state.comp[p] = union_find.find(p as u32);
        }
        state.refresh_node_components();
    }
    edges
}

impl<const D: usize> Boruvka<'_, D> {
    /// Recomputes, bottom-up, which nodes lie entirely inside one component.
    fn refresh_node_components(&mut self) {
        for (id, node) in self.tree.nodes.iter().enumerate().rev() {
            self.node_comp[id] = if node.is_leaf() {
                let range = node.range();
                let first = self.comp[range.start];
                if self.comp[range].iter().all(|&c| c == first) {
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

    /// Upper bounds for the round from the precomputed neighbour lists (cheap, and often already optimal: an
    /// edge of weight core²[p] is the lightest any edge at p can be).
    fn seed_from_neighbours(&mut self, knn_dist2: &[f64], knn_ids: &[u32], k: usize) {
        for p in 0..self.comp.len() {
            let c = self.comp[p] as usize;
            let core_p = self.core2[p];
            if core_p >= self.best_weight2[c] {
                continue;
            }
            let row = p * k..(p + 1) * k;
            for (&d2, &q) in knn_dist2[row.clone()].iter().zip(&knn_ids[row]) {
                if self.comp[q as usize] as usize == c {
                    continue;
                }
                let weight2 = d2.max(core_p).max(self.core2[q as usize]);
                if weight2 < self.best_weight2[c] {
                    self.best_weight2[c] = weight2;
                    self.best_edge[c] = (p as u32, q);
                }
            }
        }
    }

    fn search(&mut self, node_id: usize, p: usize, c: u32) {
        let tree = self.tree;
        let node = &tree.nodes[node_id];
        let query = &tree.points[p];
        if node.is_leaf() {
            let core_p = self.core2[p];
            for q in node.range() {
                let core_q = self.core2[q];
                if self.comp[q] == c || core_q >= self.best_weight2[c as usize] {
                    continue;
                }
                let weight2 = dist2(query, &tree.points[q]).max(core_p).max(core_q);
                if weight2 < self.best_weight2[c as usize] {
                    self.best_weight2[c as usize] = weight2;
                    self.best_edge[c as usize] = (p as u32, q as u32);
                    if weight2 <= core_p {
                        // No edge at p can be lighter than its core distance.
                        return;
                    }
                }
            }
            return;
        }
        let (left, right) = (node.left as usize, node.right as usize);
        let core_p = self.core2[p];
        let left_bound = self.lower_bound(left, query, c).max(core_p);
        let right_bound = self.lower_bound(right, query, c).max(core_p);
        let (near, near_bound, far, far_bound) = if left_bound <= right_bound {
            (left, left_bound, right, right_bound)
        } else {
            (right, right_bound, left, left_bound)
        };
        if near_bound < self.best_weight2[c as usize] {
            self.search(near, p, c);
        }
        if far_bound < self.best_weight2[c as usize] {
            self.search(far, p, c);
        }
    }

    /// Lower bound on the weight of any edge from `query` into the node, apart from the query's own core
    /// distance; infinite if the node is inside `c`.
    #[inline(always)]
    fn lower_bound(&self, node_id: usize, query: &[f64; D], c: u32) -> f64 {
        if self.node_comp[node_id] == c {
            return f64::INFINITY;
        }
        self.tree.nodes[node_id].box_dist2(query).max(self.node_min_core2[node_id])
    }
}
