import Foundation
import SecureMQ

/// One broker as the command line names it: where it listens and the file holding its public key.
struct BrokerEntry: Equatable, Sendable {
    var endpoint: String
    var keyPath: String
}

/// The brokers a command connects to, and where the list came from (for `--print-config` and
/// errors). Pure: the rules below read no file and no environment of their own, so each can be
/// checked with plain values.
///
/// Precedence, for endpoints and keys separately: flags win over the environment, which wins over
/// the defaults (`tcp://127.0.0.1:5555`, `certs/broker.key`). `--brokers FILE` names endpoints
/// and keys together and is the whole list: given with `--broker` or `--broker-key` it is an
/// error, and the environment is not read.
///
/// Pairing: one key for every broker, or exactly one per broker in the same order; anything
/// else is an error (a key silently given to the wrong broker fails in the handshake, far from
/// the flag that caused it).
struct BrokerList: Equatable, Sendable {
    var entries: [BrokerEntry]
    /// Where the endpoints came from: `--broker`, `--brokers FILE`, `SMQ_BROKER` or the default.
    var endpointSource: String
    /// Where the keys came from: `--broker-key`, `--brokers FILE`, `SMQ_BROKER_KEY` or the default.
    var keySource: String

    static let defaultEndpoint = "tcp://127.0.0.1:5555"
    static let defaultKey = "certs/broker.key"
    /// The most brokers one command takes: each is a connection (and, for a worker, a share of
    /// its credit); far more than a deployment needs, small enough that a pasted list of
    /// thousands is refused at once.
    static let maxBrokers = 64
    /// The longest brokers file read (a list of 64 lines is a few KiB).
    static let maxFileBytes = 1 << 20

    struct Failure: Error, Equatable, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }

    /// Resolves the command line and the environment into a list of brokers.
    /// - Parameters:
    ///   - endpointFlags: every `--broker`, in order.
    ///   - keyFlags: every `--broker-key`, in order.
    ///   - file: `--brokers FILE`, if given.
    ///   - environment: the process environment (only `SMQ_BROKER` and `SMQ_BROKER_KEY` are read).
    ///   - readFile: reads `file` (at most ``maxFileBytes``), or throws a ``Failure``.
    static func resolve(
        endpointFlags: [String], keyFlags: [String], file: String?, environment: [String: String],
        readFile: (String) throws(Failure) -> String
    ) throws(Failure) -> BrokerList {
        if let file {
            guard endpointFlags.isEmpty && keyFlags.isEmpty else {
                throw Failure("give the brokers either with --brokers FILE or with --broker/--broker-key, not both")
            }
            let entries = try parseFile(try readFile(file), name: file)
            return BrokerList(entries: entries, endpointSource: "--brokers \(file)", keySource: "--brokers \(file)")
        }
        func variable(_ name: String) -> String? {
            guard let value = environment[name], !value.isEmpty else { return nil }
            return value
        }
        let endpoints: [String], endpointSource: String
        if !endpointFlags.isEmpty {
            (endpoints, endpointSource) = (endpointFlags, "--broker")
        } else if let value = variable("SMQ_BROKER") {
            (endpoints, endpointSource) = (try split(value, variable: "SMQ_BROKER"), "SMQ_BROKER")
        } else {
            (endpoints, endpointSource) = ([defaultEndpoint], "default")
        }
        let keys: [String], keySource: String
        if !keyFlags.isEmpty {
            (keys, keySource) = (keyFlags, "--broker-key")
        } else if let value = variable("SMQ_BROKER_KEY") {
            (keys, keySource) = (try split(value, variable: "SMQ_BROKER_KEY"), "SMQ_BROKER_KEY")
        } else {
            (keys, keySource) = ([defaultKey], "default")
        }
        for key in keys where key.isEmpty { throw Failure("\(keySource) names an empty key file") }
        let entries = try pair(endpoints: endpoints, endpointSource: endpointSource, keys: keys, keySource: keySource)
        return BrokerList(entries: entries, endpointSource: endpointSource, keySource: keySource)
    }

    /// One key for all, or one per endpoint in order.
    static func pair(endpoints: [String], endpointSource: String, keys: [String], keySource: String) throws(Failure) -> [BrokerEntry] {
        guard endpoints.count <= maxBrokers else { throw Failure("\(endpoints.count) brokers given (\(endpointSource)); at most \(maxBrokers)") }
        let entries: [BrokerEntry]
        if keys.count == 1 {
            entries = endpoints.map { BrokerEntry(endpoint: $0, keyPath: keys[0]) }
        } else if keys.count == endpoints.count {
            entries = zip(endpoints, keys).map { BrokerEntry(endpoint: $0, keyPath: $1) }
        } else {
            throw Failure("\(endpoints.count) broker\(endpoints.count == 1 ? "" : "s") (\(endpointSource)) but \(keys.count) keys (\(keySource)): give one key for all brokers, or exactly one per broker in the same order")
        }
        try checkDistinct(entries.map(\.endpoint), from: endpointSource)
        return entries
    }

    /// `SMQ_BROKER=tcp://a:5555,tcp://b:5555`: comma-separated, blanks around commas ignored,
    /// no empty item (a stray comma is more likely a typo than a wish for the default).
    static func split(_ value: String, variable: String) throws(Failure) -> [String] {
        let items = value.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        guard !items.contains(where: \.isEmpty) else {
            throw Failure("\(variable) has an empty item in '\(PeerText.escaped(value))': separate entries with single commas")
        }
        return items
    }

    /// A brokers file: one broker per line, `ENDPOINT KEYFILE`, blank lines and `#` comments
    /// (a whole line, or after a blank) allowed. A relative KEYFILE is relative to the file's
    /// directory, so a file and its keys can be shipped together.
    static func parseFile(_ text: String, name: String) throws(Failure) -> [BrokerEntry] {
        let directory = URL(fileURLWithPath: name).deletingLastPathComponent().path
        var entries: [BrokerEntry] = []
        var lines: [Int] = []
        for (offset, rawLine) in text.split(omittingEmptySubsequences: false, whereSeparator: { $0 == "\n" || $0 == "\r\n" }).enumerated() {
            let location = "\(name):\(offset + 1)"
            var line = Substring(rawLine)
            if line.hasSuffix("\r") { line = line.dropLast() }
            // A comment starts at a '#' that begins the line or follows a blank.
            var previous: Character = " "
            if let hash = line.indices.first(where: { index in
                defer { previous = line[index] }
                return line[index] == "#" && (previous == " " || previous == "\t")
            }) {
                line = line[..<hash]
            }
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            if fields.isEmpty { continue }
            guard fields.count == 2 else {
                throw Failure("\(location): expected 'ENDPOINT KEYFILE', got \(fields.count) field\(fields.count == 1 ? "" : "s") in '\(PeerText.escaped(String(rawLine.prefix(200))))'")
            }
            let endpoint = String(fields[0])
            var key = String(fields[1])
            if !key.hasPrefix("/") { key = directory + "/" + key }
            entries.append(BrokerEntry(endpoint: endpoint, keyPath: key))
            lines.append(offset + 1)
            guard entries.count <= maxBrokers else { throw Failure("\(location): more than \(maxBrokers) brokers") }
        }
        guard !entries.isEmpty else { throw Failure("\(name) lists no brokers (one 'ENDPOINT KEYFILE' per line)") }
        for (index, entry) in entries.enumerated() {
            if let earlier = entries[..<index].firstIndex(where: { $0.endpoint == entry.endpoint }) {
                throw Failure("\(name):\(lines[index]): \(PeerText.escaped(entry.endpoint)) is already listed on line \(lines[earlier])")
            }
        }
        return entries
    }

    /// The same broker twice would be two connections to it, each taking a share of a worker's
    /// credit: a mistake, said at once. (The endpoint's form is the library's to check: it says
    /// what to write instead, for every role.)
    static func checkDistinct(_ endpoints: [String], from source: String) throws(Failure) {
        var seen = Set<String>()
        for endpoint in endpoints where !seen.insert(endpoint).inserted {
            throw Failure("\(source): \(PeerText.escaped(endpoint)) is given twice")
        }
    }

    /// Reads a brokers file, bounded.
    static func read(_ path: String) throws(Failure) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw Failure("cannot read --brokers \(PeerText.escaped(path)): \(String(cString: strerror(errno)))")
        }
        defer { try? handle.close() }
        let data: Data
        do { data = try handle.read(upToCount: maxFileBytes + 1) ?? Data() } catch {
            throw Failure("cannot read --brokers \(PeerText.escaped(path)): \(PeerText.escaped("\(error)"))")
        }
        guard data.count <= maxFileBytes else { throw Failure("--brokers \(PeerText.escaped(path)) is larger than \(maxFileBytes) bytes: not a brokers file") }
        guard let text = String(data: data, encoding: .utf8) else { throw Failure("--brokers \(PeerText.escaped(path)) is not UTF-8 text") }
        return text
    }
}
