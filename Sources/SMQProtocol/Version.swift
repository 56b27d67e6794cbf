/// The SMQ/1 protocol version a peer speaks.
public enum SMQProtocolVersion {
    /// The version byte (offset 3) of every message; also the fragment header's version. It stays
    /// 1 until a change would make an old peer misread the bytes (see docs/PROTOCOL.md).
    public static let current: UInt8 = 1
}
