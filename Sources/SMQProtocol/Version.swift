/// The SMQ/1 protocol version a peer speaks.
public enum SMQProtocolVersion {
    /// The version byte (offset 3) of every message; also the fragment header's version. It stays
    /// 1 until a change would make an old peer misread the bytes (see docs/PROTOCOL.md).
    public static let current: UInt8 = 1
}

/// The version of SecureMQ's tools and libraries, printed by every tool's `--version` and logged
/// by the broker at startup: one place, so they cannot disagree.
public enum SecureMQVersion {
    /// Semantic version of this source tree; raise it with every release tag.
    public static let current = "0.13.0"
}
