import ArgumentParser
import Foundation
import Logging
import SecureMQ

/// `smq ping`: one round trip through each broker (CURVE handshake, then an `mmi.service` query
/// the broker answers itself), like `nats server check` or `rabbitmq-diagnostics ping`.
struct PingCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ping",
        abstract: "Check that the brokers answer: connect, send one query, print the latency.",
        discussion: """
            With several brokers each is asked at once and gets one line (one JSON object per line \
            with --json), in the order given. Exits 0 only when every broker answered within \
            --connect-timeout; else 1, with one Error: line.
            """
    )

    @OptionGroup var peer: PeerOptions

    @Flag(help: "Print one JSON object per broker instead of a line of text.")
    var json = false

    func run() async throws {
        let (brokers, keyPair, logger) = try peer.load()
        let connection = peer.connectionOptions()
        let timeout = peer.connectTimeout
        let answers = await BrokerProbe.each(brokers) { broker in
            await Self.ping(broker, keyPair: keyPair, connection: connection, timeout: timeout, logger: logger)
        }
        if brokers.count == 1, case .failure(let failure) = answers[0] { fail(failure.message) }
        for (broker, answer) in zip(brokers, answers) {
            let endpoint = PeerText.escaped(broker.endpoint)
            switch answer {
            case .success(let (connectMs, roundTripMs)):
                print(json ? "{\"broker\":\(jsonQuoted(endpoint)),\"connect_ms\":\(connectMs),\"round_trip_ms\":\(roundTripMs)}"
                      : "pong from \(endpoint): round trip \(roundTripMs) ms (connect and handshake \(connectMs) ms)")
            case .failure(let failure):
                print(json ? "{\"broker\":\(jsonQuoted(endpoint)),\"error\":\(jsonQuoted(failure.message))}" : "no answer from \(endpoint): \(failure.message)")
            }
        }
        flushStandardOutput()
        let silent = answers.filter { if case .failure = $0 { true } else { false } }.count
        if silent > 0 { fail("\(silent) of \(brokers.count) brokers did not answer") }
    }

    private static func ping(_ broker: BrokerAddress, keyPair: KeyPair, connection: ConnectionOptions, timeout: Double,
                             logger: Logger) async -> Result<(Double, Double), ProbeFailure> {
        let started = ContinuousClock.now
        let client: Client
        do {
            var options = Client.Options()
            options.connection = connection
            client = try await Client.connect(to: broker.endpoint, brokerKey: broker.publicKey, keyPair: keyPair, options: options, logger: logger)
        } catch {
            return .failure(ProbeFailure(describe(error)))
        }
        let connected = ContinuousClock.now
        let answer = await StatusQuery.ask(client, service: "mmi.service", body: [], timeout: timeout)
        let answered = ContinuousClock.now
        await client.close()
        if case .failure(let message) = answer { return .failure(ProbeFailure(message)) }
        return .success((milliseconds(connected - started), milliseconds(answered - connected)))
    }
}

/// `smq status`: each broker's services, workers per service and queue depth (`mmi.status`, C55).
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the broker's services: worker connections, queued fragments and fragments in flight.",
        discussion: """
            Only the services this key may submit to are listed. With several brokers each is asked \
            at once and gets a 'broker ENDPOINT:' heading over its table (with --json: one line \
            per broker, {"broker": ENDPOINT, "status": REPORT} or {"broker": ENDPOINT, "error": \
            MESSAGE}). Exits 0 only when every broker answered; else 1, with one Error: line.
            """
    )

    @OptionGroup var peer: PeerOptions

    @Flag(help: "Print the broker's JSON report instead of a table.")
    var json = false

    func run() async throws {
        let (brokers, keyPair, logger) = try peer.load()
        let connection = peer.connectionOptions()
        let timeout = peer.connectTimeout
        let answers = await BrokerProbe.each(brokers) { broker in
            await Self.status(broker, keyPair: keyPair, connection: connection, timeout: timeout, logger: logger)
        }
        if brokers.count == 1 {
            switch answers[0] {
            case .failure(let failure): fail(failure.message)
            case .success(let report): print(json ? report.raw : report.table)
            }
            return
        }
        var silent = 0
        for (broker, answer) in zip(brokers, answers) {
            let endpoint = PeerText.escaped(broker.endpoint)
            switch answer {
            case .success(let report):
                print(json ? "{\"broker\":\(jsonQuoted(endpoint)),\"status\":\(report.raw)}"
                      : "broker \(endpoint):\n" + report.table.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
            case .failure(let failure):
                silent += 1
                print(json ? "{\"broker\":\(jsonQuoted(endpoint)),\"error\":\(jsonQuoted(failure.message))}" : "broker \(endpoint): no answer: \(failure.message)")
            }
        }
        flushStandardOutput()
        if silent > 0 { fail("\(silent) of \(brokers.count) brokers did not answer") }
    }

    struct Report: Sendable {
        /// The broker's JSON, as it sent it (a single line).
        let raw: String
        let table: String
    }

    private static func status(_ broker: BrokerAddress, keyPair: KeyPair, connection: ConnectionOptions, timeout: Double,
                               logger: Logger) async -> Result<Report, ProbeFailure> {
        let client: Client
        do {
            var options = Client.Options()
            options.connection = connection
            client = try await Client.connect(to: broker.endpoint, brokerKey: broker.publicKey, keyPair: keyPair, options: options, logger: logger)
        } catch {
            return .failure(ProbeFailure(describe(error)))
        }
        let answer = await StatusQuery.ask(client, service: "mmi.status", body: [], timeout: timeout)
        await client.close()
        let body: [UInt8]
        switch answer {
        case .success(let bytes): body = bytes
        case .failure(let message): return .failure(ProbeFailure(message))
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
              let services = object["services"] as? [[String: Any]] else {
            if body.elementsEqual("501".utf8) { return .failure(ProbeFailure("this broker does not answer mmi.status (it is older than smq \(SecureMQVersion.current))")) }
            return .failure(ProbeFailure("the broker's status report is not JSON: \(PeerText.escaped(String(decoding: body, as: UTF8.self)))"))
        }
        let rows = services.map { service -> [String] in
            [PeerText.escaped("\(service["name"] ?? "")"), "\(service["workers"] ?? 0)", "\(service["queued"] ?? 0)", "\(service["inFlight"] ?? 0)"]
        }
        let header = ["SERVICE", "WORKERS", "QUEUED", "IN FLIGHT"]
        let widths = (0..<4).map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
        var lines = ([header] + rows).map { row in
            row.enumerated().map { $0.element.padding(toLength: widths[$0.offset] + 2, withPad: " ", startingAt: 0) }.joined()
                .trimmingCharacters(in: .whitespaces)
        }
        if rows.isEmpty { lines.append("(no services)") }
        let draining = (object["draining"] as? Bool) == true
        lines.append("open jobs: \(object["openJobs"] ?? 0)  fragments held: \(object["fragmentsHeld"] ?? 0)  bytes held: \(object["bytesHeld"] ?? 0) of \(object["byteBudget"] ?? 0)\(draining ? "  (draining)" : "")")
        // The broker's bytes, re-serialised: one line whatever it sent, nothing unescaped.
        let raw = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])).map { String(decoding: $0, as: UTF8.self) }
            ?? "{}"
        return .success(Report(raw: raw, table: lines.joined(separator: "\n")))
    }
}

struct ProbeFailure: Error {
    let message: String
    init(_ message: String) { self.message = message }
}

enum BrokerProbe {
    /// Runs `probe` for every broker at once; the answers come back in the brokers' order.
    static func each<T: Sendable>(_ brokers: [BrokerAddress], _ probe: @escaping @Sendable (BrokerAddress) async -> T) async -> [T] {
        await withTaskGroup(of: (Int, T).self) { group in
            for (index, broker) in brokers.enumerated() { group.addTask { (index, await probe(broker)) } }
            var answers: [(Int, T)] = []
            for await answer in group { answers.append(answer) }
            return answers.sorted { $0.0 < $1.0 }.map(\.1)
        }
    }
}

enum StatusQuery {
    enum Answer { case success([UInt8]), failure(String) }

    /// One `mmi.*` request, bounded by `timeout` seconds. A FAILED from the broker is still an
    /// answer for ping (it proves the broker is alive), so its status is reported, not hidden.
    static func ask(_ client: Client, service: String, body: [UInt8], timeout: Double) async -> Answer {
        await withTaskGroup(of: Answer?.self) { group in
            group.addTask {
                do {
                    return .success(try await client.request(body, service: service))
                } catch {
                    if let error = error as? SecureMQError, error.code == .jobFailed, let status = error.status, service == "mmi.service" {
                        return .success(Array("\(status)".utf8))
                    }
                    return .failure(describe(error))
                }
            }
            group.addTask {
                try? await Task.sleep(for: .milliseconds(Int(timeout * 1000)))
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first ?? .failure("the broker did not answer within \(timeout) s")
        }
    }
}

func milliseconds(_ duration: Duration) -> Double {
    let (seconds, attoseconds) = duration.components
    return ((Double(seconds) * 1000 + Double(attoseconds) / 1e15) * 1000).rounded() / 1000
}

private func jsonQuoted(_ text: String) -> String {
    let escaped = text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
    return "\"\(escaped)\""
}
