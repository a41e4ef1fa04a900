"""Labelled data: dataset readers (MVTec AD, VisA, manifests), loading records through the
scan's decoder, and the synthetic defect generator used by tests, the demo and the bench.

Submodules are imported directly (``vip2scan.model.data.readers``, ``.loading``,
``.synthetic``); none of them imports torch.
"""
