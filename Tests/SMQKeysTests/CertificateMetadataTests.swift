import PropertyBased
import Testing
@testable import SMQKeys

@Suite struct CertificateMetadataTests {
    @Test func keepsOrderAndReplacesInPlace() {
        var metadata: CertificateMetadata = ["b": "1", "a": "2"]
        metadata["c"] = "3"
        metadata["b"] = "9"
        #expect(metadata.pairs.map(\.name) == ["b", "a", "c"])
        #expect(metadata["b"] == "9")
        metadata["a"] = nil
        #expect(Array(metadata).map(\.value) == ["9", "3"])
        #expect(metadata.count == 2)
        #expect(CertificateMetadata([("x", "1"), ("x", "2")]).pairs.map(\.value) == ["2"])
    }

    @Test func validatingInitRefusesWhatCannotBeWritten() {
        #expect(throws: CertificateError.self) { _ = try CertificateMetadata(validating: [("x", "1"), ("x", "2")]) }
        #expect(throws: CertificateError.self) { _ = try CertificateMetadata(validating: [("", "1")]) }
        #expect(throws: CertificateError.self) { _ = try CertificateMetadata(validating: [("a b", "1")]) }
        #expect(throws: CertificateError.self) { _ = try CertificateMetadata(validating: [("a", "say \"hi\"")]) }
        #expect(throws: CertificateError.self) { _ = try CertificateMetadata(validating: [("secret-key", "x")]) }
        #expect(throws: Never.self) { _ = try CertificateMetadata(validating: [("a.b_c+d-1", "x # y 'z' = é")]) }
    }

    static let nameCharacters = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._+-")
    /// Everything a value may hold, including what trips naive ZPL parsers: #, ', =, spaces, non-ASCII.
    static let valueCharacters = Array("abcXYZ019 #'=.,:;/\\$@&()[]{}<>!?*~`|^%éß→😀\u{7E}")

    static let names = Gen<Character?>.element(of: nameCharacters).map { $0! }.string(of: 1...16)
    static let values = Gen<Character?>.element(of: valueCharacters).map { $0! }.string(of: 0...40)
    static let pairs = zip(names, values).array(of: 0...8)

    @Test func metadataSurvivesWriteThenRead() async {
        let key = KeyPair.generate()
        await propertyCheck(count: 300, input: Self.pairs) { generated in
            // Names that pyzmq would take for the key are refused by design; the rest must round-trip.
            let pairs = generated.filter { !$0.0.hasPrefix("public-key") && !$0.0.hasPrefix("secret-key") }
            let metadata = CertificateMetadata(pairs)
            let certificate = Certificate(keyPair: key, metadata: metadata)
            for secret in [false, true] {
                let bytes = certificate.render(secret: secret, name: "p")
                let parsed = try Certificate.parse(bytes, path: "p", secretFile: secret)
                #expect(parsed.metadata == metadata)
                #expect(parsed.metadata.pairs.map(\.name) == metadata.pairs.map(\.name))
                #expect(parsed.publicKey == key.publicKey)
                #expect(parsed.format == .secureMQ)
            }
        }
    }

    @Test func metadataSurvivesSaveThenLoad() async throws {
        try await withTemporaryDirectory { dir in
            await propertyCheck(count: 25, input: Self.pairs) { generated in
                let pairs = generated.filter { !$0.0.hasPrefix("public-key") && !$0.0.hasPrefix("secret-key") }
                let metadata = CertificateMetadata(pairs)
                let paths = try Certificate(keyPair: .generate(), metadata: metadata).save(directory: dir, name: "p", overwrite: true)
                #expect(try Certificate.load(path: paths.publicPath).metadata == metadata)
                #expect(try Certificate.load(path: paths.secretPath!).metadata == metadata)
            }
        }
    }
}
