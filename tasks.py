"""This repository's tasks: the deploytools collection, used as any project would use it."""

from deploytools.tasks import collection

ns = collection
