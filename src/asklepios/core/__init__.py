"""The pure decision core: values and functions with no I/O and no clock reads.

Everything that decides what Asklepios does to a node or a pod lives here, so it
can be tested exhaustively (hypothesis) without a cluster. The caller passes
`now`; nothing here imports kubernetes-asyncio, anyio or reads time.
"""
