"""The projector: drains the partition logs through Redis consumer groups into the MongoDB read model.

Run it with ``python -m projector`` (see ``python -m projector --help`` for the operator commands).
"""
