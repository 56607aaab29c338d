"""vlaenv: environments a policy acts in, speaking the store's feature names.

``vlaenv.base`` defines the :class:`~vlaenv.base.Env` protocol and its spec; ``vlaenv.metaworld``
is the Meta-World implementation (``pip install -e ".[sim]"``). Nothing here imports torch.
"""
