"""Griffe extension: Sphinx cross-reference roles in docstrings become site links.

pyrocg's docstrings use Sphinx roles (``:class:`~pyrocg.infer.CGModel```, ``:func:`fit```).
mkdocstrings' Sphinx parser reads the ``:param:`` fields but leaves roles as text, so this
extension rewrites them before rendering:

* a fully qualified ``pyrocg.…`` target becomes a *required* cross-reference: if it names
  nothing the site renders, ``mkdocs build --strict`` fails (a stale reference is a bug);
* a short name that resolves in the scope of the documented object (``:func:`fit``` inside
  ``pyrocg.infer``) becomes an *optional* reference: a link where the object is rendered,
  plain code where it is private;
* anything else (``torch.Tensor``, ``pyro.infer.Predictive``, ``ValueError``) becomes inline
  code — the PyTorch and Pyro inventories cannot be fetched offline, so no link is made.
* a fully qualified ``pyrocg.…`` target that does not even exist in the package is logged
  as a warning, which fails the strict build.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import griffe

_log = logging.getLogger("mkdocs.plugins.pyrocg_roles")

ROLE = re.compile(r":(?:py:)?(mod|class|func|meth|attr|data|obj|exc|const):`(~?)\.?([^`<>]+)`")


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if member.is_alias:
            continue
        yield from _walk(member)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring of the loaded package (see the module doc)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                text = ROLE.sub(lambda m, o=obj: self._replace(m, o, pkg), obj.docstring.value)
                text = re.sub(r"(?<=\S)::\n", ":\n", text)  # reST literal-block marker
                obj.docstring.value = fence_doctests(text)

    @staticmethod
    def _lookup(path: str, pkg: griffe.Module) -> str | None:
        """The identifier to link for ``path`` (an undocumented attribute links to its
        class, which lists it among its fields), or None when nothing has that path."""
        if path == pkg.path:
            return path
        try:
            obj = pkg[path[len(pkg.path) + 1 :]]
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return None
        if obj.is_attribute and obj.docstring is None and obj.parent is not None and obj.parent.is_class:
            return path.rsplit(".", 1)[0]
        return path

    def _replace(self, match: re.Match, obj: griffe.Object, pkg: griffe.Module) -> str:
        _role, tilde, target = match.groups()
        target = re.sub(r"\s+", "", target)
        title = target.rsplit(".", 1)[-1] if tilde else target
        code = f"`{title}`"
        if target == pkg.path or target.startswith(pkg.path + "."):
            identifier = self._lookup(target, pkg)
            if identifier is None:
                _log.warning("%s: docstring references %s, which does not exist", obj.path, target)
                return code
            return f"[{code}][{identifier}]"
        scopes = [obj] + [p for p in _parents(obj)]
        for scope in scopes:
            try:
                path = scope.resolve(target)
            except (griffe.NameResolutionError, AttributeError):
                continue
            if path.startswith(pkg.path + ".") or path == pkg.path:
                return f'<autoref identifier="{path}" optional><code>{title}</code></autoref>'
            break
        return code


def fence_doctests(text: str) -> str:
    """Put each doctest block (``>>>`` lines, their continuations and outputs, up to a blank
    line) in a ``pycon`` code fence, so Markdown shows it as code and not as text."""
    out: list[str] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        stripped = lines[i].lstrip()
        if stripped.startswith(">>>") and not (out and out[-1].lstrip().startswith("```")):
            indent = lines[i][: len(lines[i]) - len(stripped)]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].lstrip())
                i += 1
            if out and out[-1].strip():
                out.append("")
            out += ["```pycon", *block, "```", ""]
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def _parents(obj: griffe.Object):
    parent = obj.parent
    while parent is not None:
        yield parent
        parent = parent.parent
