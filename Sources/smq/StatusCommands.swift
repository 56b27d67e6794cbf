import ArgumentParser
import Foundation
import SecureMQ

/// `smq ping`: one round trip through the broker (CURVE handshake, then an `mmi.service` query
/// the broker answers itself), like `nats server check` or `rabbitmq-diagnostics ping`.
struct PingCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ping",
        abstract: "Check that a broker answers: connect, send one query, print the latency.",
        discussion: "Exits 0 when the broker answered, 1 (with one Error: line) when it did not within --connect-timeout."
    )

    @OptionGroup var peer: PeerOptions

    @Flag(help: "Print one JSON object instead of a line of text.")
    var json = false

    func run() async throws {
        let (brokerKey, keyPair, logger) = try peer.load()
        let started = ContinuousClock.now
        let client: Client
        do {
            var options = Client.Options()
            options.connection = peer.connectionOptions()
            client = try await Client.connect(to: peer.broker, brokerKey: brokerKey, keyPair: keyPair, options: options, logger: logger)
        } catch {
            fail(describe(error))
        }
        let connected = ContinuousClock.now
        let answer = await StatusQuery.ask(client, service: "mmi.service", body: [], timeout: peer.connectTimeout)
        let answered = ContinuousClock.now
        await client.close()
        guard case .success = answer else {
            if case .failure(let message) = answer { fail(message) }
            fail("the broker did not answer")
        }
        let connectMs = milliseconds(connected - started)
        let roundTripMs = milliseconds(answered - connected)
        if json {
            print("{\"broker\":\(jsonQuoted(peer.broker)),\"connect_ms\":\(connectMs),\"round_trip_ms\":\(roundTripMs)}")
        } else {
            print("pong from \(peer.broker): round trip \(roundTripMs) ms (connect and handshake \(connectMs) ms)")
        }
    }
}

/// `smq status`: the broker's services, workers per service and queue depth (`mmi.status`, C55).
struct StatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show the broker's services: worker connections, queued fragments and fragments in flight.",
        discussion: "Only the services this key may submit to are listed. Exits 1 when the broker does not answer."
    )

    @OptionGroup var peer: PeerOptions

    @Flag(help: "Print the broker's JSON report instead of a table.")
    var json = false

    func run() async throws {
        let (brokerKey, keyPair, logger) = try peer.load()
        let client: Client
        do {
            var options = Client.Options()
            options.connection = peer.connectionOptions()
            client = try await Client.connect(to: peer.broker, brokerKey: brokerKey, keyPair: keyPair, options: options, logger: logger)
        } catch {
            fail(describe(error))
        }
        let answer = await StatusQuery.ask(client, service: "mmi.status", body: [], timeout: peer.connectTimeout)
        await client.close()
        let body: [UInt8]
        switch answer {
        case .success(let bytes): body = bytes
        case .failure(let message): fail(message)
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
              let services = object["services"] as? [[String: Any]] else {
            if body.elementsEqual("501".utf8) { fail("this broker does not answer mmi.status (it is older than smq \(SecureMQVersion.current))") }
            fail("the broker's status report is not JSON: \(PeerText.escaped(String(decoding: body, as: UTF8.self)))")
        }
        if json {
            print(String(decoding: body, as: UTF8.self))
            return
        }
        let rows = services.map { service -> [String] in
            [PeerText.escaped("\(service["name"] ?? "")"), "\(service["workers"] ?? 0)", "\(service["queued"] ?? 0)", "\(service["inFlight"] ?? 0)"]
        }
        let header = ["SERVICE", "WORKERS", "QUEUED", "IN FLIGHT"]
        let widths = (0..<4).map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
        for row in [header] + rows {
            print(row.enumerated().map { $0.element.padding(toLength: widths[$0.offset] + 2, withPad: " ", startingAt: 0) }.joined()
                .trimmingCharacters(in: .whitespaces))
        }
        if rows.isEmpty { print("(no services)") }
        let draining = (object["draining"] as? Bool) == true
        print("open jobs: \(object["openJobs"] ?? 0)  fragments held: \(object["fragmentsHeld"] ?? 0)  bytes held: \(object["bytesHeld"] ?? 0) of \(object["byteBudget"] ?? 0)\(draining ? "  (draining)" : "")")
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

private func milliseconds(_ duration: Duration) -> Double {
    let (seconds, attoseconds) = duration.components
    return ((Double(seconds) * 1000 + Double(attoseconds) / 1e15) * 1000).rounded() / 1000
}

private func jsonQuoted(_ text: String) -> String {
    let escaped = text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
    return "\"\(escaped)\""
}
