"""A prefix trie over label names written as decoder tokens, for constrained generation.

XLGen's label-text decoding (`xmc_core.xlgen`, ``decoding="label_text"``) writes each label as
the word pieces of its name followed by an end-of-label token. Decoding must emit only whole,
valid names, and never one it has already emitted; this module gives the arrays and the one
vectorized step that enforce it for a whole beam at once.

The trie holds every label's token sequence, end token included, so a name that is a prefix of
another ("tax" and "tax on income") stays two labels: they part at the end token. Labels are
numbered in the trie's depth-first order (children by increasing token), so the labels below any
node are one contiguous run of positions ``lo .. hi - 1``. Whether a node can still lead to a
label the hypothesis may emit is then one difference of a prefix sum over a per-hypothesis mask
of allowed labels, whatever the rule that built the mask (labels of higher frequency rank than the
last one emitted; only labels of generated clusters).

Shapes: M trie nodes (node 0 is the root), E edges (M − 1), L labels, n hypotheses, V decoder
tokens. Arrays are int64 numpy; `TrieTensors` holds the same on a torch device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["LabelTrie", "build_trie", "TrieTensors"]


@dataclass
class LabelTrie:
    """The trie's arrays (see the module docstring).

    child_ptr (M + 1,): node u's edges are child_ptr[u] : child_ptr[u + 1], sorted by token.
    edge_token (E,): the decoder token on each edge. edge_child (E,): the node it leads to.
    node_label (M,): the label whose sequence ends at the node (−1 for all but leaves).
    node_lo, node_hi (M,): the node's labels are trie positions node_lo .. node_hi − 1.
    label_pos (L,): each label's trie position; pos_label (L,): its inverse.
    max_length: tokens of the longest label sequence (end token included).
    """

    child_ptr: np.ndarray
    edge_token: np.ndarray
    edge_child: np.ndarray
    node_label: np.ndarray
    node_lo: np.ndarray
    node_hi: np.ndarray
    label_pos: np.ndarray
    pos_label: np.ndarray
    max_length: int

    @property
    def n_nodes(self) -> int:
        """M, the number of nodes (int), the root included."""
        return len(self.node_label)

    @property
    def n_labels(self) -> int:
        """L, the number of labels (int)."""
        return len(self.label_pos)

    def walk(self, tokens: Sequence[int]) -> int:
        """The node reached from the root along `tokens` (int), or −1 when some token has no edge.

        Args:
            tokens: decoder token ids.
        """
        u = 0
        for t in tokens:
            lo, hi = self.child_ptr[u], self.child_ptr[u + 1]
            j = lo + int(np.searchsorted(self.edge_token[lo:hi], t))
            if j >= hi or self.edge_token[j] != t:
                return -1
            u = int(self.edge_child[j])
        return u

    def decode(self, tokens: Sequence[int]) -> list[int]:
        """The labels a token sequence spells, in order (list of int), reading whole names only.

        Args:
            tokens: decoder token ids, e.g. a generated sequence's label segment; a token that
                leaves the trie restarts at the root (an invalid sequence yields what it completed).
        """
        out, u = [], 0
        for t in tokens:
            lo, hi = self.child_ptr[u], self.child_ptr[u + 1]
            j = lo + int(np.searchsorted(self.edge_token[lo:hi], t))
            if j >= hi or self.edge_token[j] != t:
                u = 0
                continue
            u = int(self.edge_child[j])
            if self.node_label[u] >= 0:
                out.append(int(self.node_label[u]))
                u = 0
        return out


def build_trie(sequences: Sequence[Sequence[int]]) -> LabelTrie:
    """The trie of L label sequences (each one's last token is the end-of-label token).

    Args:
        sequences: L non-empty sequences of decoder token ids, pairwise distinct, none a prefix of
            another (true when every one ends with the same end token that no other position uses).

    Returns:
        LabelTrie with int64 arrays.

    Raises:
        ValueError: an empty sequence, two equal sequences, or one that is a prefix of another
            (its label would be unreachable), naming the labels.
    """
    children: list[dict[int, int]] = [{}]
    node_label = [-1]
    for lid, seq in enumerate(sequences):
        if len(seq) == 0:
            raise ValueError(f"label {lid}: empty token sequence")
        u = 0
        for t in seq:
            if node_label[u] >= 0:
                raise ValueError(f"label {node_label[u]}'s tokens are a prefix of label {lid}'s")
            nxt = children[u].get(int(t))
            if nxt is None:
                nxt = len(children)
                children[u][int(t)] = nxt
                children.append({})
                node_label.append(-1)
            u = nxt
        if node_label[u] >= 0:
            raise ValueError(f"labels {node_label[u]} and {lid} have the same token sequence")
        if children[u]:
            raise ValueError(f"label {lid}'s tokens are a prefix of another label's")
        node_label[u] = lid
    M = len(children)
    child_ptr = np.zeros(M + 1, np.int64)
    child_ptr[1:] = np.cumsum([len(c) for c in children])
    edge_token = np.empty(M - 1, np.int64)
    edge_child = np.empty(M - 1, np.int64)
    for u, c in enumerate(children):
        items = sorted(c.items())
        edge_token[child_ptr[u]:child_ptr[u + 1]] = [t for t, _ in items]
        edge_child[child_ptr[u]:child_ptr[u + 1]] = [v for _, v in items]
    # depth-first order (children by token): each subtree's labels form one run of positions
    lo = np.zeros(M, np.int64)
    hi = np.zeros(M, np.int64)
    pos_label = []
    stack = [(0, False)]
    while stack:
        u, done = stack.pop()
        if done:
            hi[u] = len(pos_label)
            continue
        lo[u] = len(pos_label)
        if node_label[u] >= 0:
            pos_label.append(node_label[u])
        stack.append((u, True))
        for e in range(child_ptr[u + 1] - 1, child_ptr[u] - 1, -1):
            stack.append((int(edge_child[e]), False))
    pos_label = np.asarray(pos_label, np.int64)
    label_pos = np.empty(len(sequences), np.int64)
    label_pos[pos_label] = np.arange(len(pos_label))
    return LabelTrie(child_ptr, edge_token, edge_child, np.asarray(node_label, np.int64), lo, hi, label_pos,
                     pos_label, max((len(s) for s in sequences), default=0))


class TrieTensors:
    """A `LabelTrie` on a torch device, with the one step constrained beam search needs.

    Args:
        trie: the LabelTrie; device: a torch device (str or torch.device).
    """

    def __init__(self, trie: LabelTrie, device):
        import torch

        def t(a):
            return torch.as_tensor(np.asarray(a), dtype=torch.long, device=device)

        self.trie = trie
        self.child_ptr, self.edge_token, self.edge_child = t(trie.child_ptr), t(trie.edge_token), t(trie.edge_child)
        self.node_label, self.node_lo, self.node_hi = t(trie.node_label), t(trie.node_lo), t(trie.node_hi)
        self.pos_label = t(trie.pos_label)

    def allowed(self, node, valid, n_tokens: int):
        """Which tokens each hypothesis may write next, and the node each one leads to.

        Args:
            node: (n,) int64 tensor, each hypothesis' current node.
            valid: (n, L) bool tensor in trie-position order: the labels each hypothesis may still
                emit (rank order, clusters, a label cap: whatever the caller decided).
            n_tokens: V, the decoder vocabulary size (every edge token is below it).

        Returns:
            (allowed (n, V) bool, next_node (n, V) int64: the node a token leads to, −1 where not
            allowed). A token is allowed when its edge leads to a subtree holding a valid label.
        """
        import torch

        n = node.shape[0]
        start = self.child_ptr[node]
        count = self.child_ptr[node + 1] - start  # (n,)
        hyp = torch.repeat_interleave(torch.arange(n, device=node.device), count)  # (m,)
        first = torch.cumsum(count, 0) - count
        edge = start[hyp] + torch.arange(hyp.shape[0], device=node.device) - first[hyp]
        child = self.edge_child[edge]
        cs = torch.nn.functional.pad(torch.cumsum(valid.to(torch.int32), dim=1), (1, 0))  # (n, L + 1)
        ok = (cs[hyp, self.node_hi[child]] - cs[hyp, self.node_lo[child]]) > 0
        allowed = torch.zeros(n, n_tokens, dtype=torch.bool, device=node.device)
        next_node = torch.full((n, n_tokens), -1, dtype=torch.long, device=node.device)
        hyp, tok, child = hyp[ok], self.edge_token[edge[ok]], child[ok]
        allowed[hyp, tok] = True
        next_node[hyp, tok] = child
        return allowed, next_node
