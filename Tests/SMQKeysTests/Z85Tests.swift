import Testing
@testable import SMQKeys

@Suite struct Z85Tests {
    @Test func rfc32Vector() throws {
        let bytes: [UInt8] = [0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B]
        #expect(try Z85.encode(bytes) == "HelloWorld")
        #expect(try Z85.decode("HelloWorld") == bytes)
    }

    @Test func zmqCurveManPagePair() throws {
        let secret = try SecretKey(z85: "D:)Q[IlAW!ahhC2ac:9*A}h:p?([4%wOTJ%JR%cs")
        #expect(try secret.derivePublicKey().z85 == "Yne@$w-vo<fVvi]a<NY6T1ed:M$fCG*[IaLV{hID")
    }

    @Test func rejectsBadInput() {
        #expect(throws: Z85Error.self) { _ = try Z85.decode("Hell") }
        #expect(throws: Z85Error.self) { _ = try Z85.decode("Hello Worl") }
        #expect(throws: Z85Error.self) { _ = try Z85.decode("#####") }
        #expect(throws: Z85Error.self) { _ = try Z85.encode([1, 2, 3]) }
        #expect(throws: KeyError.self) { _ = try PublicKey(z85: String(repeating: "0", count: 40)) }
    }
}

/// The in-place paths that secret keys take (no String, no reallocation): same results as the
/// public ones.
@Suite struct InPlaceSecretPathTests {
    @Test func decodingFromBytesMatchesDecodingText() throws {
        let pair = KeyPair.generate()
        let text = pair.secretKey.z85Text
        let file = Array("    secret-key = \"\(text)\"\n".utf8)
        let start = try #require(file.firstIndex(of: UInt8(ascii: "\""))) + 1
        var out = [UInt8]()
        try Z85.decode(utf8: file[start..<start + 40], into: &out)
        #expect(out == (try Z85.decode(text)))
        let key = try SecretKey(z85UTF8: file[start..<start + 40])
        #expect(try key.derivePublicKey() == pair.publicKey)
        #expect(throws: KeyError.self) { _ = try SecretKey(z85UTF8: file[start..<start + 39]) }
        let error = try #require(throws: KeyError.self) { _ = try SecretKey(z85UTF8: Array(("~" + text.dropFirst()).utf8)) }
        #expect(error.code == .badEncoding)
    }

    @Test func encodingIntoAPresizedBufferMatchesEncode() throws {
        let pair = KeyPair.generate()
        var out = [UInt8]()
        out.reserveCapacity(40)
        pair.secretKey.appendZ85(to: &out)
        #expect(String(decoding: out, as: UTF8.self) == pair.secretKey.z85Text)
    }

    @Test func appendingPastCapacityKeepsEveryByte() {
        var bytes = [UInt8]()
        bytes.reserveCapacity(3)
        bytes.append(contentsOf: [1, 2, 3])
        FileIO.appendWiping([4, 5, 6, 7, 8][...], to: &bytes)
        FileIO.appendWiping([9][...], to: &bytes)
        #expect(bytes == [1, 2, 3, 4, 5, 6, 7, 8, 9])
    }

    @Test func aSecretFileRendersTheKeyLineLast() throws {
        let pair = KeyPair.generate()
        let bytes = Certificate(keyPair: pair, metadata: ["name": "w"]).render(secret: true, name: "w")
        let text = String(decoding: bytes, as: UTF8.self)
        #expect(text.hasSuffix("    public-key = \"\(pair.publicKey.z85)\"\n    secret-key = \"\(pair.secretKey.z85Text)\"\n"))
        let parsed = try Certificate.parse(bytes, path: "w.key_secret", secretFile: true)
        #expect(try parsed.keyPair().publicKey == pair.publicKey)
    }
}
