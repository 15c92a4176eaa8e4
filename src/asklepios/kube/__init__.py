"""The only code that talks to the apiserver (through kubernetes-asyncio).

A thin typed adapter: raw JSON in and out (orjson), turned into the core's
frozen values at the edge, so the rest of Asklepios never sees API objects.
"""
