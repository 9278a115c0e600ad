//! From the sorted MST to labels: single-linkage tree, condensed tree, excess-of-mass selection, labelling.
//!
//! These steps follow the reference library's definitions operation for operation (same traversal orders, same
//! floating-point expressions, including its single-precision accumulation of child stabilities in the
//! excess-of-mass comparison), so that for the same single-linkage tree the same clusters are selected and
//! numbered the same way.

/// One merge of the single-linkage tree. Ids `< n` are points, id `n + i` is the node made by merge `i`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Merge {
    pub left: u32,
    pub right: u32,
    pub distance: f64,
    pub size: u32,
}

/// One row of the condensed tree: `child` (a point `< n`, or a cluster `>= n`) leaves or splits off `parent` (a
/// cluster, the root being `n`) at density `lambda = 1 / distance`.
#[derive(Clone, Copy, Debug)]
pub(super) struct CondensedRow {
    pub parent: u32,
    pub child: u32,
    pub lambda: f64,
    pub child_size: u32,
}

/// Single linkage from MST edges `(a, b, distance)` that are already sorted by distance.
pub(super) fn single_linkage(n: usize, sorted_edges: &[(u32, u32, f64)]) -> Vec<Merge> {
    let total = 2 * n - 1;
    let mut parent: Vec<u32> = (0..total as u32).collect();
    let mut size = vec![1u32; total];
    let mut merges = Vec::with_capacity(sorted_edges.len());
    for (i, &(a, b, distance)) in sorted_edges.iter().enumerate() {
        let left = find_compress(&mut parent, a);
        let right = find_compress(&mut parent, b);
        let merged = (n + i) as u32;
        size[merged as usize] = size[left as usize] + size[right as usize];
        parent[left as usize] = merged;
        parent[right as usize] = merged;
        merges.push(Merge {
            left,
            right,
            distance,
            size: size[merged as usize],
        });
    }
    merges
}

fn find_compress(parent: &mut [u32], x: u32) -> u32 {
    let mut root = x;
    while parent[root as usize] != root {
        root = parent[root as usize];
    }
    let mut node = x;
    while parent[node as usize] != root {
        let next = parent[node as usize];
        parent[node as usize] = root;
        node = next;
    }
    root
}

/// Condenses the single-linkage tree: walking it breadth-first from the top, a split into two parts of at least
/// `min_cluster_size` points makes two new clusters, a smaller part's points fall out of the current cluster.
pub(super) fn condense(n: usize, merges: &[Merge], min_cluster_size: usize) -> Vec<CondensedRow> {
    let root = 2 * n - 2;
    let node_size = |node: u32| {
        if (node as usize) < n {
            1
        } else {
            merges[node as usize - n].size
        }
    };
    let mut relabel = vec![0u32; root + 1];
    relabel[root] = n as u32;
    let mut next_label = n as u32 + 1;
    let mut ignore = vec![false; root + 1];
    let mut rows = Vec::with_capacity(2 * n);
    let mut scratch = Vec::new();

    let mut node_queue = Vec::with_capacity(root + 1);
    let node_list = breadth_first(n, merges, root as u32, &mut node_queue);
    for &node in node_list {
        if ignore[node as usize] || (node as usize) < n {
            continue;
        }
        let merge = merges[node as usize - n];
        let lambda = if merge.distance > 0.0 {
            1.0 / merge.distance
        } else {
            f64::INFINITY
        };
        let (left, right) = (merge.left, merge.right);
        let left_big = node_size(left) as usize >= min_cluster_size;
        let right_big = node_size(right) as usize >= min_cluster_size;
        let parent = relabel[node as usize];
        if left_big && right_big {
            for child in [left, right] {
                relabel[child as usize] = next_label;
                rows.push(CondensedRow {
                    parent,
                    child: next_label,
                    lambda,
                    child_size: node_size(child),
                });
                next_label += 1;
            }
            continue;
        }
        if left_big {
            relabel[left as usize] = parent;
        }
        if right_big {
            relabel[right as usize] = parent;
        }
        for (child, big) in [(left, left_big), (right, right_big)] {
            if big {
                continue;
            }
            for &sub_node in breadth_first(n, merges, child, &mut scratch).iter() {
                if (sub_node as usize) < n {
                    rows.push(CondensedRow {
                        parent,
                        child: sub_node,
                        lambda,
                        child_size: 1,
                    });
                }
                ignore[sub_node as usize] = true;
            }
        }
    }
    rows
}

/// Breadth-first order of the subtree of `start`, left child before right child.
fn breadth_first<'s>(n: usize, merges: &[Merge], start: u32, queue: &'s mut Vec<u32>) -> &'s [u32] {
    queue.clear();
    queue.push(start);
    let mut head = 0;
    while head < queue.len() {
        let node = queue[head] as usize;
        head += 1;
        if node >= n {
            let merge = merges[node - n];
            queue.push(merge.left);
            queue.push(merge.right);
        }
    }
    queue
}

/// Labels from the condensed tree by excess of mass, the root excluded: -1 for noise, clusters numbered in
/// increasing condensed-tree id.
pub(super) fn select_and_label(n: usize, rows: &[CondensedRow]) -> Vec<i32> {
    let mut labels = vec![-1; n];
    let cluster_count = rows
        .iter()
        .map(|r| r.parent.max(r.child) as usize + 1)
        .max()
        .unwrap_or(n)
        .saturating_sub(n);
    if cluster_count < 2 {
        return labels;
    }
    let index = |cluster: u32| cluster as usize - n;

    let mut birth = vec![f64::NAN; cluster_count];
    birth[0] = 0.0;
    let mut parent_of = vec![u32::MAX; cluster_count];
    let mut children: Vec<Vec<u32>> = vec![Vec::new(); cluster_count];
    for row in rows.iter().filter(|r| r.child as usize >= n) {
        birth[index(row.child)] = row.lambda;
        parent_of[index(row.child)] = row.parent;
        children[index(row.parent)].push(row.child);
    }
    let mut stability = vec![0.0f64; cluster_count];
    for row in rows {
        let c = index(row.parent);
        stability[c] += (row.lambda - birth[c]) * f64::from(row.child_size);
    }

    // Children always have larger ids than their parent, so descending order visits children first.
    let mut selected = vec![true; cluster_count];
    selected[0] = false;
    for c in (1..cluster_count).rev() {
        let mut subtree_stability = 0.0f32;
        for &child in &children[c] {
            subtree_stability = (f64::from(subtree_stability) + stability[index(child)]) as f32;
        }
        if f64::from(subtree_stability) > stability[c] {
            selected[c] = false;
            stability[c] = f64::from(subtree_stability);
        } else {
            let mut stack: Vec<u32> = children[c].clone();
            while let Some(descendant) = stack.pop() {
                selected[index(descendant)] = false;
                stack.extend_from_slice(&children[index(descendant)]);
            }
        }
    }

    let mut cluster_label = vec![-1i32; cluster_count];
    let mut next = 0;
    for c in 1..cluster_count {
        cluster_label[c] = if selected[c] {
            next += 1;
            next - 1
        } else {
            cluster_label[index(parent_of[c])]
        };
    }
    for row in rows.iter().filter(|r| (r.child as usize) < n) {
        labels[row.child as usize] = cluster_label[index(row.parent)];
    }
    labels
}
