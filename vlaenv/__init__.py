"""vlaenv: environments a policy acts in, speaking the store's feature names.

``vlaenv.base`` defines the :class:`~vlaenv.base.Env` protocol and its spec; ``vlaenv.metaworld``
is the Meta-World implementation (``pip install -e ".[sim]"``) and ``vlaenv.metaworld_demos`` its
scripted-expert demonstrations as a ``vladata`` Source (``vladata collect metaworld``).
vlaenv imports ``vladata`` (episode, errors) and never ``vlatrain``. Nothing here imports torch.
"""
