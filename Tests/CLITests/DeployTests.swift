import Foundation
import Testing

/// deploy/secure-broker.service: systemd accepts every line of it, and the broker every flag.
@Suite struct DeployTests {
    static let unit = AbusePeers.packageRoot + "/deploy/secure-broker.service"
    static let analyzer = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].first { FileManager.default.isExecutableFile(atPath: $0) }

    /// The unit with ExecStart pointing at the binary under test (verify checks that it exists).
    static func localCopy(_ harness: ProcessHarness, edit: (String) -> String = { $0 }) throws -> String {
        let text = try String(contentsOfFile: unit, encoding: .utf8)
        let binary = try BuiltProduct.path("secure-broker")
        let path = harness.directory + "/secure-broker.service"
        try edit(text.replacingOccurrences(of: "/usr/local/bin/secure-broker", with: binary)).write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    @Test(.enabled(if: analyzer != nil, "systemd-analyze is not installed"), .timeLimit(.minutes(1)))
    func systemdAnalyzeVerifiesTheUnitWithoutAWarning() async throws {
        let harness = try ProcessHarness("deploy")
        defer { harness.tearDown() }
        let analyzer = try #require(Self.analyzer)
        let good = try await harness.run(executable: analyzer, ["verify", "--man=no", try Self.localCopy(harness)], name: "verify")
        #expect(good.termination == .exited(0), "\(good.transcript)")
        // verify exits 0 for unknown keys and bad values, and only says so on stderr.
        #expect(good.stderr.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "\(good.transcript)")
        // The check can fail: a misspelt option is reported.
        let bad = try await harness.run(executable: analyzer, ["verify", "--man=no", try Self.localCopy(harness) {
            $0.replacingOccurrences(of: "NoNewPrivileges=yes", with: "NoNewPrivilege=yes")
        }], name: "verify-bad")
        #expect(bad.stderr.contains("NoNewPrivilege"), "\(bad.transcript)")
    }

    @Test(.timeLimit(.minutes(1)))
    func everyFlagInExecStartIsOneTheBrokerHas() async throws {
        let harness = try ProcessHarness("deploy-flags")
        defer { harness.tearDown() }
        let text = try String(contentsOfFile: Self.unit, encoding: .utf8).replacingOccurrences(of: "\\\n", with: " ")
        let execStart = try #require(text.split(separator: "\n").first { $0.hasPrefix("ExecStart=") })
        let flags = execStart.split(separator: " ").filter { $0.hasPrefix("--") }.map(String.init)
        #expect(flags.count >= 4, "\(execStart)")
        let help = try await harness.run("secure-broker", ["--help"])
        let options = HelpText.options(in: help.stdoutText)
        for flag in flags { #expect(options[flag] != nil, "\(flag) in deploy/secure-broker.service is not a secure-broker flag") }
    }
}
