internal import CZeroMQ
import Logging
import Synchronization

/// The library's ZAP handler (RFC 27): the only thing that decides who may complete a CURVE
/// handshake with a SecureMQ server socket.
///
/// One per ``SecureContext``, bound at `inproc://zeromq.zap.01` before any server socket binds
/// (without it a CURVE server accepts every key). It decides from the 32-byte key frame only —
/// never the identity frame, which is the *server* socket's routing id — with one hash lookup in
/// the allowlist of the request's domain, so it never blocks a handshake. It answers `200` with
/// `User-Id` = the key's Z85 text and the allowlist entry's metadata, `400` for everything else,
/// and logs every decision.
final class ZAPHandler: @unchecked Sendable {
    // @unchecked: `domains` is behind a Mutex; the socket is confined to `thread`.
    static let endpoint = "inproc://zeromq.zap.01"

    struct Policy {
        let allowlist: Allowlist
        let logger: Logger
    }

    struct Counters: Sendable {
        var allowed = 0
        var denied = 0
        var malformed = 0
    }

    private let thread: SocketThread
    private let domains = Mutex<[String: Policy]>([:])
    private let counters = Mutex(Counters())
    private let logger: Logger
    private var socket: ZMQSocket?

    init(context: UnsafeMutableRawPointer, logger: Logger) throws(SecureMQError) {
        self.logger = logger
        thread = try SocketThread(name: "securemq-zap")
        let thread = self.thread
        let contextAddress = UInt(bitPattern: context)
        let box = UncheckedBox(self)
        try thread.runAndWait { () throws(SecureMQError) in
            let handler = box.value
            let socket = try ZMQSocket(context: UnsafeMutableRawPointer(bitPattern: contextAddress)!, kind: .rep)
            try socket.set(ZMQ_LINGER, 0)
            try socket.bind(ZAPHandler.endpoint)
            handler.socket = socket
            _ = thread.register(socket, onReadable: { [unowned handler] in handler.drain() })
            thread.onStop { socket.close(linger: .zero) }
        }
    }

    func stop() {
        thread.shutdownAndWait()
    }

    var statistics: Counters { counters.withLock { $0 } }

    /// Adds a domain's policy. Throws if the domain is taken.
    func register(domain: String, allowlist: Allowlist, logger: Logger) throws(SecureMQError) {
        guard !domain.isEmpty else {
            // An empty domain would let libzmq skip ZAP altogether (ZEROMQ-NOTES).
            throw SecureMQError(.invalidConfiguration, "a ZAP domain must not be empty")
        }
        let taken = domains.withLock { table -> Bool in
            if table[domain] != nil { return true }
            table[domain] = Policy(allowlist: allowlist, logger: logger)
            return false
        }
        if taken { throw SecureMQError(.invalidConfiguration, "the ZAP domain '\(domain)' is already used by another server socket in this context") }
    }

    func unregister(domain: String) {
        _ = domains.withLock { $0.removeValue(forKey: domain) }
    }

    // MARK: owner thread

    private func drain() {
        guard let socket else { return }
        // The owner thread asks again while a message waits, but drain what is queued so a
        // burst of handshakes does not cost one pass each.
        while true {
            let received: (parts: [ZMQMessage], truncated: Bool)?
            do { received = try socket.receiveMultipart(maxParts: 8) } catch {
                logger.error("ZAP handler receive failed", metadata: ["error": "\(error)"])
                return
            }
            guard let (parts, truncated) = received else { return }
            let reply = decide(parts: parts, truncated: truncated)
            send(reply, on: socket)
        }
    }

    struct Reply {
        var requestID: [UInt8]
        var status: String
        var text: String
        var userID: String = ""
        var metadata: [UInt8] = []
    }

    func decide(parts: [ZMQMessage], truncated: Bool) -> Reply {
        let requestID = parts.count > 1 ? parts[1].array : []
        func malformed(_ reason: String) -> Reply {
            counters.withLock { $0.malformed += 1 }
            logger.warning("ZAP request rejected", metadata: ["status": "400", "reason": "\(reason)"])
            return Reply(requestID: requestID, status: "400", text: reason)
        }
        guard parts.count >= 6, !truncated else { return malformed("malformed ZAP request: \(parts.count) frames") }
        guard parts[0].bytes.elementsEqual("1.0".utf8) else { return malformed("unsupported ZAP version") }
        let domain = String(decoding: parts[2].bytes, as: UTF8.self)
        let address = String(decoding: parts[3].bytes, as: UTF8.self)
        let mechanism = String(decoding: parts[5].bytes, as: UTF8.self)
        guard let policy = domains.withLock({ $0[domain] }) else {
            return malformed("unknown ZAP domain '\(domain)' (from \(address))")
        }
        guard mechanism == "CURVE" else {
            counters.withLock { $0.denied += 1 }
            policy.logger.warning("peer denied", metadata: ["address": "\(address)", "reason": "mechanism \(mechanism) is not CURVE"])
            return Reply(requestID: requestID, status: "400", text: "only CURVE is accepted")
        }
        guard parts.count == 7, parts[6].count == PublicKey.byteCount, let key = try? PublicKey(bytes: parts[6].bytes) else {
            return malformed("CURVE credentials must be one 32-byte public key")
        }
        guard let entry = policy.allowlist.entry(for: key) else {
            counters.withLock { $0.denied += 1 }
            policy.logger.warning("peer denied", metadata: [
                "key": "\(key.fingerprint)", "address": "\(address)", "reason": "key not on the allowlist",
            ])
            return Reply(requestID: requestID, status: "400", text: "key not on the allowlist")
        }
        counters.withLock { $0.allowed += 1 }
        policy.logger.info("peer admitted", metadata: [
            "key": "\(key.fingerprint)", "name": "\(entry.name)", "address": "\(address)",
        ])
        return Reply(requestID: requestID, status: "200", text: "OK", userID: key.z85,
                     metadata: Self.encodeProperties(entry.metadata.pairs))
    }

    /// ZMTP property format: name length (1 byte), name, value length (4 bytes, big-endian), value.
    static func encodeProperties(_ pairs: [(name: String, value: String)]) -> [UInt8] {
        var out: [UInt8] = []
        for (name, value) in pairs {
            let nameBytes = Array(name.utf8), valueBytes = Array(value.utf8)
            // Names are at most 255 bytes in ZMTP; the certificate parser already limits them.
            guard !nameBytes.isEmpty, nameBytes.count <= 255 else { continue }
            out.append(UInt8(nameBytes.count))
            out.append(contentsOf: nameBytes)
            let length = UInt32(valueBytes.count)
            out.append(contentsOf: [UInt8(length >> 24), UInt8(truncatingIfNeeded: length >> 16),
                                    UInt8(truncatingIfNeeded: length >> 8), UInt8(truncatingIfNeeded: length)])
            out.append(contentsOf: valueBytes)
        }
        return out
    }

    private func send(_ reply: Reply, on socket: ZMQSocket) {
        let frames: [[UInt8]] = [Array("1.0".utf8), reply.requestID, Array(reply.status.utf8),
                                 Array(reply.text.utf8), Array(reply.userID.utf8), reply.metadata]
        do {
            for (index, frame) in frames.enumerated() {
                _ = try socket.send(frame, more: index < frames.count - 1)
            }
        } catch {
            logger.error("ZAP reply failed", metadata: ["error": "\(error)"])
        }
    }
}

/// Carries a value across a `@Sendable` boundary where the receiving side is the only user
/// (a thread hand-off). Use only where a comment says why that is safe.
struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
