"""Model families: each module subclasses `trainables.family.Family` and ends with
`FAMILY = ItsFamily()`, which the registry finds."""
