/// Checks endpoints before libzmq sees them: libzmq answers a malformed one with `EINVAL`
/// ("errno 22"), which tells a person nothing. Every role goes through here, so a client, a
/// worker and a broker all say the same thing: `use tcp://HOST:PORT`.
enum Endpoint {
    enum Use { case connect, bind }

    /// Throws `.invalidConfiguration` naming the endpoint and the form to use, unless it is
    /// `tcp://HOST:PORT` (PORT 1–65535; for binding also `*` or `0`, and HOST `*`),
    /// `ipc://PATH` or `inproc://NAME`.
    static func validate(_ endpoint: String, for use: Use) throws(SecureMQError) {
        let shown = PeerText.escaped(endpoint)
        func invalid(_ why: String) -> SecureMQError {
            SecureMQError(.invalidConfiguration, "'\(shown)' is not an endpoint (\(why)): use tcp://HOST:PORT, e.g. tcp://127.0.0.1:5555")
        }
        for scheme in ["ipc://", "inproc://"] where endpoint.hasPrefix(scheme) {
            guard endpoint.utf8.count > scheme.utf8.count else { throw invalid("nothing after \(scheme)") }
            return
        }
        guard endpoint.hasPrefix("tcp://") else {
            let parts = endpoint.split(separator: "://", maxSplits: 1, omittingEmptySubsequences: false)
            if parts.count == 2 {
                throw invalid("unknown scheme '\(PeerText.escaped(String(parts[0])))'")
            }
            throw invalid("no scheme")
        }
        let rest = endpoint.dropFirst("tcp://".count)
        guard let colon = rest.lastIndex(of: ":") else { throw invalid("no port") }
        let host = rest[..<colon], port = rest[rest.index(after: colon)...]
        guard !host.isEmpty else { throw invalid("no host") }
        if use == .bind, port == "*" { return }
        guard let number = Int(port), (use == .bind ? 0...65_535 : 1...65_535).contains(number) else {
            throw invalid(port.isEmpty ? "no port" : "port '\(PeerText.escaped(String(port)))' is not 1–65535")
        }
    }
}
