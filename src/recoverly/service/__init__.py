"""recoverly.service: the reference ML service (extra ``recoverly[service]``).

.. versionadded:: 0.2
"""
