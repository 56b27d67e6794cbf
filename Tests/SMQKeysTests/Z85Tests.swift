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
