import Foundation
import SMQKeys
import Testing

/// Signs that a program crashed or trapped instead of explaining a mistake.
let crashMarkers = ["Fatal error", "Stack dump", "Current stack trace", "backtrace", "Illegal instruction", "Segmentation fault"]

@Suite struct SecureBrokerHelpTests {
    /// Every flag the broker has, with a word its help must use: each must be explained.
    static let flags: [(flag: String, mentions: String)] = [
        ("--endpoint", "bind"), ("--cert", "secret"), ("--allowlist", "allowed"), ("--strategy", "round-robin"),
        ("--base-window", "weight"), ("--byte-budget", "BUSY"), ("--max-fragment", "fragment"),
        ("--default-role", "client, worker or both"), ("--max-jobs", "jobs"), ("--service-timeout", "404"),
        ("--heartbeat-ms", "Heartbeat"), ("--liveness", "dead"), ("--max-deliveries", "504"),
        ("--drain-timeout", "shutdown"), ("--stats-interval", "statistics"), ("--log-level", "debug"), ("--allow-insecure-secret", "group"), ("--help", "help"),
        ("--max-fragments", "BUSY"), ("--max-ended-jobs", "410"), ("--max-connections-per-key", "DISCONNECT"),
        ("--work-lease", "requeued and charged"), ("--slow-client-timeout", "unread"), ("--peer-hwm", "ZMQ_SNDHWM"),
        ("--log-interval", "suppressed"), ("--max-outbox", "slow consumer"),
        ("--metrics-endpoint", "Prometheus"), ("--log-format", "json"), ("--version", "version"),
        ("--io-threads", "CURVE"), ("--config", "JSON"), ("--print-config", "effective"),
    ]

    @Test(.timeLimit(.minutes(2)))
    func helpExitsZeroAndExplainsEveryFlag() async throws {
        let harness = try ProcessHarness("broker-help")
        defer { harness.tearDown() }
        let help = try await harness.run("secure-broker", ["--help"])
        #expect(help.termination == .exited(0), "\(help.transcript)")
        #expect(help.stderr.isEmpty, "\(help.transcript)")
        let text = help.stdoutText
        #expect(text.contains("USAGE: secure-broker"))
        #expect(text.contains("SIGTERM"), "the help should say how to stop the broker")

        let options = HelpText.options(in: text)
        for (flag, mention) in Self.flags {
            let explanation = try #require(options[flag], "--help does not list \(flag):\n\(text)")
            #expect(explanation.split(separator: " ").count >= 3, "\(flag) is not explained: '\(explanation)'")
            #expect(explanation.contains(mention), "\(flag): '\(explanation)' does not mention '\(mention)'")
        }
        // A flag added without help text, or without a line here, fails too.
        for (flag, explanation) in options {
            #expect(!explanation.isEmpty, "\(flag) has no explanation")
            #expect(Self.flags.contains { $0.flag == flag }, "\(flag) is new: add it to SecureBrokerHelpTests.flags")
        }
    }
}

/// ArgumentParser's help, read back: option → its explanation (wrapped lines joined).
enum HelpText {
    static func options(in help: String) -> [String: String] {
        let lines = help.split(separator: "\n", omittingEmptySubsequences: false)
        guard let heading = lines.firstIndex(of: "OPTIONS:") else { return [:] }
        let section = lines[(heading + 1)...].prefix { !$0.isEmpty }
        // Explanations start in one column: where the wrapped lines are indented to.
        let column = section.filter { !$0.hasPrefix("  -") }
            .map { $0.prefix { $0 == " " }.count }.min() ?? 26
        var options: [String: String] = [:]
        var flags: [String] = []
        for line in section {
            let characters = Array(line)
            if line.hasPrefix("  -") {
                // "  -h, --help              Show help information." or, when the synopsis
                // reaches the column, "  --base-window <base-window>" with the text below.
                let fits = characters.count > column && characters[column - 1] == " "
                let synopsis = fits ? String(characters[..<column]) : line.description
                flags = synopsis.split(separator: " ").map { $0.trimmingCharacters(in: CharacterSet(charactersIn: ",")) }
                    .filter { $0.hasPrefix("--") }
                for flag in flags { options[flag] = fits ? String(characters[column...]) : "" }
            } else {
                for flag in flags { options[flag, default: ""] += " " + line.trimmingCharacters(in: .whitespaces) }
            }
        }
        return options.mapValues { $0.trimmingCharacters(in: .whitespaces) }
    }
}

@Suite struct SecureBrokerMistakeTests {
    enum Mistake: String, CaseIterable, Sendable, CustomTestStringConvertible {
        case unknownStrategy, zeroByteBudget, missingCertificate, worldReadableSecret, missingAllowlist, unknownFlag
        var testDescription: String { rawValue }
    }

    /// A mistake gets one `Error:` sentence that names the culprit, a non-zero status, and
    /// neither a stack trace nor a listening broker.
    @Test(.timeLimit(.minutes(2)), arguments: Mistake.allCases)
    func aMistakeExitsNonZeroWithAnErrorLine(_ mistake: Mistake) async throws {
        let harness = try ProcessHarness("broker-mistake")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        var cert = certs.broker.secretPath
        var allowlist = certs.allowlist
        var extra: [String] = []
        let culprit: String
        switch mistake {
        case .unknownStrategy:
            extra = ["--strategy", "nope"]
            culprit = "--strategy"
        case .zeroByteBudget:
            extra = ["--byte-budget", "0"]
            culprit = "--byte-budget"
        case .missingCertificate:
            cert = harness.directory + "/certs/nobody.key_secret"
            culprit = cert
        case .worldReadableSecret:
            #expect(chmod(cert, 0o644) == 0)
            culprit = "chmod 600"
        case .missingAllowlist:
            allowlist = harness.directory + "/no-such-dir"
            culprit = allowlist
        case .unknownFlag:
            extra = ["--bogus"]
            culprit = "--bogus"
        }
        let result = try await harness.run("secure-broker", [
            "--endpoint", "tcp://127.0.0.1:*", "--cert", cert, "--allowlist", allowlist,
        ] + extra, timeout: .seconds(20))

        guard case .exited(let status) = result.termination else {
            Issue.record("secure-broker \(result.termination)\n\(result.transcript)")
            return
        }
        #expect(status != 0, "\(result.transcript)")
        let error = try #require(result.errorLines.first, "no line starting 'Error: ' on stderr\n\(result.transcript)")
        #expect(error.contains(culprit), "'\(error)' does not name '\(culprit)'")
        for marker in crashMarkers {
            #expect(!result.stderr.contains(marker), "stderr shows '\(marker)'\n\(result.transcript)")
        }
        #expect(!result.stderr.contains("listening"), "the broker started anyway\n\(result.transcript)")
        #expect(result.stdout.isEmpty, "\(result.transcript)")
        if mistake == .worldReadableSecret {
            let secret = try #require(try Certificate.load(path: cert, allowInsecurePermissions: true).secretKey)
            #expect(!result.stderr.contains(secret.z85Text), "the refused secret was printed")
        }
    }
}

@Suite struct SecureBrokerNumberTests {
    /// Numbers a user might type that must be refused, not trapped on or accepted: NaN,
    /// infinities, negatives, values past 64 bits, zero where a positive number is needed.
    static let refused: [(flag: String, value: String)] = [
        ("--service-timeout", "nan"), ("--service-timeout", "1e300"), ("--service-timeout", "-1"), ("--service-timeout", "inf"),
        ("--drain-timeout", "-1"), ("--drain-timeout", "nan"), ("--work-lease", "0"), ("--work-lease", "-inf"),
        ("--work-lease", "1e19"), ("--slow-client-timeout", "nan"), ("--log-interval", "0"), ("--log-interval", "1e300"),
        ("--max-jobs", "0"), ("--max-jobs", "1e300"), ("--max-jobs", "99999999999999999999"), ("--base-window", "0"),
        ("--base-window", "100001"), ("--liveness", "0"), ("--max-deliveries", "0"), ("--heartbeat-ms", "99"),
        ("--heartbeat-ms", "60001"), ("--stats-interval", "0"), ("--max-fragments", "0"), ("--max-ended-jobs", "-1"),
        ("--max-connections-per-key", "0"), ("--peer-hwm", "0"), ("--byte-budget", "-1M"), ("--byte-budget", "99999999999999G"),
        ("--max-fragment", "1G"), ("--byte-budget", "512K"), ("--max-outbox", "0"),
    ]

    @Test(.timeLimit(.minutes(3)))
    func everyNumericFlagIsRangeChecked() async throws {
        let harness = try ProcessHarness("broker-numbers")
        defer { harness.tearDown() }
        let certs = try TestCertificates(in: harness.directory)
        for (flag, value) in Self.refused {
            let result = try await harness.run("secure-broker", [
                "--endpoint", "tcp://127.0.0.1:*", "--cert", certs.broker.secretPath, "--allowlist", certs.allowlist, "\(flag)=\(value)",
            ], timeout: .seconds(20))
            guard case .exited(let status) = result.termination else {
                Issue.record("\(flag)=\(value): secure-broker \(result.termination)\n\(result.transcript)")
                continue
            }
            #expect(status != 0, "\(flag)=\(value) was accepted\n\(result.transcript)")
            let error = result.errorLines.first ?? ""
            #expect(error.contains(flag), "\(flag)=\(value): '\(error)' does not name the flag\n\(result.transcript)")
            #expect(result.errorLines.count == 1, "\(flag)=\(value): more than one Error line\n\(result.transcript)")
            for marker in crashMarkers {
                #expect(!result.stderr.contains(marker), "\(flag)=\(value): stderr shows '\(marker)'\n\(result.transcript)")
            }
            #expect(!result.stderr.contains("listening"), "\(flag)=\(value): the broker started anyway")
        }
    }
}
