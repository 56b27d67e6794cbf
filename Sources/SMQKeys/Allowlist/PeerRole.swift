/// What an allowlisted peer may do: submit work (`client`), process it (`worker`), or `both`.
public struct PeerRole: Hashable, Sendable, CustomStringConvertible {
    /// `client`, `worker` or `both`, as certificate metadata spells it.
    public let rawValue: String

    private init(name: String) { rawValue = name }

    public static let client = PeerRole(name: "client")
    public static let worker = PeerRole(name: "worker")
    public static let both = PeerRole(name: "both")

    /// Every role, in the order help texts list them.
    public static let all: [PeerRole] = [.client, .worker, .both]

    /// The role spelled `rawValue` (exactly, lowercase); nil for anything else.
    public init?(rawValue: String) {
        guard let role = Self.all.first(where: { $0.rawValue == rawValue }) else { return nil }
        self = role
    }

    /// Whether a peer with this role may act as `role`: `both` allows `client` and `worker`.
    public func allows(_ role: PeerRole) -> Bool {
        self == .both || self == role
    }

    public var description: String { rawValue }
}
