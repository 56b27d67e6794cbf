"""CURVE certificate files as keygen, pyzmq and CZMQ write them.

A certificate is ZPL text (ZeroMQ Property Language, RFC 4) with a ``metadata`` and a ``curve``
section::

    metadata
        name = "worker-1"
        role = "worker"
    curve
        public-key = "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID"
        secret-key = "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs"

File names: keygen and pyzmq write ``NAME.key`` and ``NAME.key_secret``, CZMQ ``NAME`` and
``NAME_secret``. A path ending in ``_secret`` is a secret file: it must hold both keys, the
secret must derive the public key, and the file must not be readable by its group or others (as
the Swift library, SMQKeys, refuses it). Values may be bare (pyzmq) or quoted (CZMQ, keygen).

This reader is as strict as the Swift one where CZMQ loses data silently: a tab or 2-space
indentation, a ``#`` glued to a bare value, invalid Z85 or an all-zero key are errors that name
the file and the line.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Union

from .errors import SecureMQError

__all__ = [
    "CertificateError",
    "Certificate",
    "load_certificate",
    "load_public_key",
    "z85_encode",
    "z85_decode",
    "is_secret_path",
]

PathLike = Union[str, "os.PathLike[str]"]

_Z85_CHARS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_Z85_VALUES = {c: i for i, c in enumerate(_Z85_CHARS)}


class CertificateError(SecureMQError):
    """A certificate file that cannot be used.

    Attributes:
        code: What was wrong: ``notFound``, ``io``, ``insecurePermissions``, ``syntax``,
            ``invalidKey``, ``keyMismatch``, ``missingKey``, ``unexpectedSecret``,
            ``invalidMetadata`` (the Swift ``CertificateError.Code`` names).
        path: The file, when there is one.
        line: The 1-based line to blame, when there is one.
    """

    def __init__(self, code: str, message: str, path: Optional[str] = None, line: Optional[int] = None) -> None:
        self.code = code
        self.path = path
        self.line = line
        where = path or "certificate"
        if line is not None:
            where += f":{line}"
        super().__init__(f"{where}: {message}")


def z85_encode(data: bytes) -> str:
    """Z85 (RFC 32) of ``data``, whose length is a multiple of 4."""
    if len(data) % 4:
        raise ValueError("Z85 encodes a multiple of 4 bytes")
    out: List[str] = []
    for i in range(0, len(data), 4):
        value = int.from_bytes(data[i:i + 4], "big")
        chunk = []
        for _ in range(5):
            value, digit = divmod(value, 85)
            chunk.append(_Z85_CHARS[digit])
        out.extend(reversed(chunk))
    return "".join(out)


def z85_decode(text: str) -> bytes:
    """The bytes of Z85 ``text``; raises ValueError on a length that is not a multiple of 5, a
    character outside the alphabet or a group above 2^32 - 1 (CZMQ would return zeros)."""
    if len(text) % 5:
        raise ValueError(f"Z85 text is a multiple of 5 characters; got {len(text)}")
    out = bytearray()
    for i in range(0, len(text), 5):
        value = 0
        for c in text[i:i + 5]:
            digit = _Z85_VALUES.get(c)
            if digit is None:
                raise ValueError(f"{c!r} is not a Z85 character")
            value = value * 85 + digit
        if value > 0xFFFFFFFF:
            raise ValueError(f"Z85 group {text[i:i + 5]!r} is larger than 32 bits")
        out += value.to_bytes(4, "big")
    return bytes(out)


@dataclass(frozen=True)
class Certificate:
    """A CURVE certificate: a public key, maybe its secret, and metadata.

    Attributes:
        public_key: 32 bytes.
        secret_key: 32 bytes, or None for a public certificate.
        metadata: ``name -> value`` in file order (``name``, ``role``, ``weight``, ``services``).
        path: The file it was read from.
        format: Who wrote it, by its header comment: ``secureMQ``, ``pyzmq``, ``czmq`` or ``zpl``.
    """

    public_key: bytes
    secret_key: Optional[bytes] = field(default=None, repr=False)
    metadata: Dict[str, str] = field(default_factory=dict)
    path: Optional[str] = None
    format: str = "zpl"

    @property
    def public_z85(self) -> str:
        """The public key as 40 Z85 characters."""
        return z85_encode(self.public_key)

    @property
    def fingerprint(self) -> str:
        """Z85 of the key's first 8 bytes: how the broker names the key in its logs."""
        return self.public_z85[:10]

    @property
    def name(self) -> str:
        """The metadata ``name``, or the fingerprint."""
        return self.metadata.get("name", self.fingerprint)

    @property
    def has_secret(self) -> bool:
        """Whether this certificate can identify its holder (it has the secret key)."""
        return self.secret_key is not None


def is_secret_path(path: PathLike) -> bool:
    """Whether ``path`` names a secret file: ``X.key_secret`` (keygen, pyzmq) or ``X_secret``
    (CZMQ)."""
    return os.path.basename(os.fspath(path)).endswith("_secret")


def load_certificate(path: PathLike, allow_insecure_permissions: bool = False) -> Certificate:
    """Loads a certificate file, public or secret.

    Args:
        path: The file. A name ending in ``_secret`` is read as a secret certificate.
        allow_insecure_permissions: Load a secret file even if its group or others may read it.

    Returns:
        The certificate; ``secret_key`` is set for a secret file.

    Raises:
        CertificateError: naming the file and, where one is to blame, the line.
    """
    name = os.fspath(path)
    secret_file = is_secret_path(name)
    try:
        with open(name, "rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise CertificateError("io", "is not a regular file", name)
            if secret_file and not allow_insecure_permissions:
                _check_private(mode, name)
            contents = handle.read(1 << 20)
    except FileNotFoundError:
        raise CertificateError("notFound", "does not exist", name) from None
    except PermissionError:
        raise CertificateError("io", "cannot be read (permission denied)", name) from None
    except IsADirectoryError:
        raise CertificateError("io", "is a directory, not a certificate file", name) from None
    except OSError as error:
        raise CertificateError("io", f"cannot be read: {error.strerror}", name) from None
    return parse_certificate(contents, name, secret_file)


def load_public_key(source: Union[PathLike, bytes, Certificate]) -> bytes:
    """A public key from a certificate file (public or secret), a :class:`Certificate`, 40 Z85
    characters (str or bytes) or 32 raw bytes."""
    if isinstance(source, Certificate):
        return source.public_key
    if isinstance(source, (bytes, bytearray)):
        raw = bytes(source)
        if len(raw) == 32:
            return _check_key(raw, "public key", None, None)
        if len(raw) == 40:
            return _decode_key(raw.decode("ascii", errors="replace"), "public key", None, None)
        raise CertificateError("invalidKey", f"a key is 32 bytes or 40 Z85 characters; got {len(raw)} bytes")
    text = os.fspath(source)
    if len(text) == 40 and not os.path.exists(text):
        return _decode_key(text, "public key", None, None)
    return load_certificate(text).public_key


def _check_private(mode: int, path: str) -> None:
    permissions = stat.S_IMODE(mode)
    if permissions & 0o077 == 0:
        return
    group, other = bool(permissions & 0o070), bool(permissions & 0o007)
    who = "its group and other users" if group and other else ("its group" if group else "other users")
    raise CertificateError(
        "insecurePermissions",
        f"secret certificate is accessible to {who} (mode {permissions:04o}); make it private with: chmod 600 {path}",
        path,
    )


def _check_key(raw: bytes, what: str, path: Optional[str], line: Optional[int]) -> bytes:
    if len(raw) != 32:
        raise CertificateError("invalidKey", f"{what}: a CURVE key is 32 bytes; got {len(raw)}", path, line)
    if raw == bytes(32):
        raise CertificateError(
            "invalidKey",
            f"{what}: the key is all zeros, which is never a real key (CZMQ writes zeros for invalid Z85): make a new certificate",
            path, line)
    return raw


def _decode_key(text: str, what: str, path: Optional[str], line: Optional[int], secret: bool = False) -> bytes:
    if len(text) != 40:
        raise CertificateError("invalidKey", f"{what}: a Z85 key is 40 characters; got {len(text)}", path, line)
    try:
        raw = z85_decode(text)
    except ValueError as error:
        # Never quote a secret's characters in an error.
        raise CertificateError("invalidKey", f"{what}: " + ("the secret-key is not valid Z85" if secret else f"invalid Z85 key: {error}"),
                               path, line) from None
    return _check_key(raw, what, path, line)


# -- ZPL ---------------------------------------------------------------------------------------

_NAME_BYTES = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789$-_@.&+/")


def _zpl_lines(text: str, path: Optional[str]) -> Tuple[List[Tuple[int, int, str, Optional[str]]], List[str]]:
    """(line number, level, name, value or None) for each property line, and the comments."""
    lines: List[Tuple[int, int, str, Optional[str]]] = []
    comments: List[str] = []
    deepest = 0
    if text.startswith("\ufeff"):
        text = text[1:]
    number = 0
    for raw in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        number += 1

        def fail(message: str) -> CertificateError:
            return CertificateError("syntax", message, path, number)

        line = raw.rstrip(" \t")
        if not line:
            continue
        bad = next((c for c in line if (ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F), None)
        if bad is not None:
            raise fail(f"control character byte 0x{ord(bad):X} in the line")
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        if stripped.startswith("#"):
            comments.append(stripped[1:])
            continue
        if stripped.startswith("\t"):
            raise fail("indentation contains a tab: indent with 4 spaces per level")
        if indent % 4:
            raise fail(f"indented by {indent} spaces: indent with 4 spaces per level")
        level = indent // 4
        if level > deepest:
            raise fail(f"indented by {indent} spaces, deeper than the line above allows (at most {deepest * 4})")
        i = 0
        while i < len(stripped) and stripped[i] in _NAME_BYTES:
            i += 1
        if i == 0:
            raise fail(f"expected a name, found {stripped[0]!r}")
        name = stripped[:i]
        if name.startswith("/") or name.endswith("/"):
            raise fail(f"'/' cannot start or end a name ({name!r})")
        rest = stripped[i:].lstrip(" \t")
        value: Optional[str]
        if not rest or rest.startswith("#"):
            value = None
        elif not rest.startswith("="):
            raise fail(f"expected '=' or the end of the line after {name!r}, found {rest[0]!r}")
        else:
            rest = rest[1:].lstrip(" \t")
            if not rest:
                value = ""
            elif rest[0] in "\"'":
                quote = rest[0]
                close = rest.find(quote, 1)
                if close < 0:
                    raise fail(f"the value of {name!r} has no closing {quote}")
                after = rest[close + 1:].lstrip(" \t")
                if after and not after.startswith("#"):
                    raise fail(f"unexpected text after the quoted value of {name!r} (only a # comment may follow)")
                value = rest[1:close]
            else:
                hash_at = rest.find("#")
                if hash_at > 0 and rest[hash_at - 1] not in " \t":
                    raise fail(f"the unquoted value of {name!r} contains '#', which ZPL reads as the start of a comment: "
                               "put the value in double quotes, or a space before a comment")
                value = (rest if hash_at < 0 else rest[:hash_at]).rstrip(" \t")
        lines.append((number, level, name, value))
        deepest = level + 1
    return lines, comments


def parse_certificate(contents: bytes, path: Optional[str] = None, secret_file: bool = False) -> Certificate:
    """Parses the bytes of a certificate file (see :func:`load_certificate`)."""
    try:
        text = contents.decode("utf-8")
    except UnicodeDecodeError as error:
        line = contents[: error.start].count(b"\n") + 1
        raise CertificateError("syntax", "the line is not valid UTF-8", path, line) from None
    lines, comments = _zpl_lines(text, path)
    sections: Dict[str, int] = {}
    section: Optional[str] = None
    metadata: Dict[str, str] = {}
    metadata_lines: Dict[str, int] = {}
    keys: Dict[str, Tuple[str, int]] = {}
    for number, level, name, value in lines:
        def fail(code: str, message: str) -> CertificateError:
            return CertificateError(code, message, path, number)

        if level == 0:
            if value:
                raise fail("syntax", f"'{name} = ...' at the top level: a certificate has only the sections 'metadata' and "
                                     "'curve', with their properties indented by 4 spaces")
            if name not in ("metadata", "curve"):
                raise fail("syntax", f"unknown section {name!r}: a certificate has only 'metadata' and 'curve'")
            if name in sections:
                raise fail("syntax", f"a second {name!r} section (the first is on line {sections[name]})")
            sections[name] = number
            section = name
        elif level == 1:
            if value is None:
                raise fail("syntax", f"{name!r} has no value: write {name} = \"...\"")
            if section == "metadata":
                if name in metadata_lines:
                    raise fail("invalidMetadata", f"metadata {name!r} appears twice (first on line {metadata_lines[name]})")
                if any(ord(c) < 0x20 or ord(c) == 0x7F or c == '"' for c in value):
                    raise fail("invalidMetadata", f"the value of {name!r} contains a quote or a control character")
                metadata_lines[name] = number
                metadata[name] = value
            else:
                if name not in ("public-key", "secret-key"):
                    raise fail("syntax", f"unknown property {name!r} in 'curve': expected public-key or secret-key")
                if name in keys:
                    raise fail("syntax", f"a second {name} (the first is on line {keys[name][1]})")
                keys[name] = (value, number)
        else:
            raise fail("syntax", f"{name!r} is nested too deep: properties sit one level (4 spaces) under 'metadata' or 'curve'")
    if "public-key" not in keys:
        raise CertificateError("missingKey", "no public-key in a 'curve' section: not a CURVE certificate", path)
    public_text, public_line = keys["public-key"]
    public_key = _decode_key(public_text, "public-key", path, public_line)
    secret_key: Optional[bytes] = None
    if secret_file:
        if "secret-key" not in keys:
            raise CertificateError("missingKey", "no secret-key in this secret certificate: load the public file instead, "
                                                 "or use the file that holds the secret", path)
        secret_text, secret_line = keys["secret-key"]
        secret_key = _decode_key(secret_text, "secret-key", path, secret_line, secret=True)
        derived = _derive_public(secret_key)
        if derived != public_key:
            raise CertificateError(
                "keyMismatch",
                f"the secret-key does not belong to the public-key on line {public_line} (it derives "
                f"{z85_encode(derived)[:10]}..., the file says {z85_encode(public_key)[:10]}...): the file was edited or mixed up; "
                "use the original or make a new certificate",
                path, secret_line)
    elif "secret-key" in keys:
        name = path or "FILE"
        raise CertificateError(
            "unexpectedSecret",
            f"a secret-key in a file named like a public certificate: if it is a secret certificate, rename it to "
            f"{name}_secret and chmod 600 it; never share it",
            path, keys["secret-key"][1])
    fmt = "zpl"
    for comment in comments:
        if "by SecureMQ" in comment:
            fmt = "secureMQ"
            break
        if "by pyzmq" in comment:
            fmt = "pyzmq"
            break
        if "by CZMQ" in comment:
            fmt = "czmq"
            break
    return Certificate(public_key=public_key, secret_key=secret_key, metadata=metadata, path=path, format=fmt)


def _derive_public(secret_key: bytes) -> bytes:
    import zmq

    return z85_decode(zmq.curve_public(z85_encode(secret_key).encode("ascii")).decode("ascii"))
