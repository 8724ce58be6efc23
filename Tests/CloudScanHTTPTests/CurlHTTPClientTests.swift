import CloudScanHTTP
import CloudScanTestSupport
import Foundation
import Testing

@Suite("CurlHTTPClient (local server)")
struct CurlHTTPClientTests {
    @Test("GET, POST with headers and body, and a 404 are reported as they are")
    func requests() async throws {
        let server = try LocalHTTPServer()
        defer { server.stop() }
        let client = CurlHTTPClient()

        let hello = try await client.perform(HTTPRequest(url: "\(server.baseURL)/hello"))
        #expect(hello.status == 200)
        #expect(String(decoding: hello.body, as: UTF8.self) == "hello")
        #expect(hello.header("Content-Type") == "text/plain")

        let payload = Array("{\"scan\":\"42\"}".utf8)
        let echo = try await client.perform(
            HTTPRequest(
                method: "POST", url: "\(server.baseURL)/echo",
                headers: [("Content-Type", "application/json"), ("X-Token", "abc")], body: payload))
        #expect(echo.status == 201)
        #expect(echo.body == payload)
        #expect(echo.header("x-echo-token") == "abc")
        #expect(echo.header("x-echo-method") == "POST")

        let missing = try await client.perform(HTTPRequest(url: "\(server.baseURL)/nope"))
        #expect(missing.status == 404)
    }

    @Test("a response over the size limit fails instead of filling memory")
    func sizeLimit() async throws {
        let server = try LocalHTTPServer()
        defer { server.stop() }
        let error = await #expect(throws: HTTPClientError.self) {
            try await CurlHTTPClient().perform(
                HTTPRequest(url: "\(server.baseURL)/big", maximumResponseBytes: 1 << 20))
        }
        #expect(error?.code == .responseTooLarge)
    }

    @Test("a server that does not answer in time is a time-out")
    func timeout() async throws {
        let server = try LocalHTTPServer()
        defer { server.stop() }
        let error = await #expect(throws: HTTPClientError.self) {
            try await CurlHTTPClient().perform(HTTPRequest(url: "\(server.baseURL)/slow", timeout: .milliseconds(500)))
        }
        #expect(error?.code == .timedOut)
    }

    @Test("nothing listening is a connection failure; other schemes are refused")
    func connectionRefusedAndSchemes() async throws {
        let server = try LocalHTTPServer()
        let port = server.port
        server.stop()
        let refused = await #expect(throws: HTTPClientError.self) {
            try await CurlHTTPClient().perform(HTTPRequest(url: "http://127.0.0.1:\(port)/hello"))
        }
        #expect(refused?.code == .connectionFailed)
        await #expect(throws: HTTPClientError.self) {
            try await CurlHTTPClient().perform(HTTPRequest(url: "file:///etc/hostname"))
        }
    }
}

@Suite("Outbound destinations: screening and pinning")
struct DestinationScreenTests {
    @Test("a pinned address is where the request goes, whatever DNS says (a name that does not resolve at all)")
    func pinned() async throws {
        let server = try LocalHTTPServer()
        defer { server.stop() }
        var request = HTTPRequest(url: "http://cloudscan-pinned.invalid:\(server.port)/hello")
        let unpinned = await #expect(throws: HTTPClientError.self) { try await CurlHTTPClient().perform(request) }
        #expect(unpinned?.code == .connectionFailed, "the name itself resolves nowhere")
        request.pinnedAddresses = ["cloudscan-pinned.invalid:\(server.port):127.0.0.1"]
        let response = try await CurlHTTPClient().perform(request)
        #expect(response.status == 200 && String(decoding: response.body, as: UTF8.self) == "hello")
    }

    @Test("redirects are answers, never followed")
    func noRedirects() async throws {
        let server = try LocalHTTPServer()
        defer { server.stop() }
        let client = CurlHTTPClient()
        for _ in 0..<2 {  // a pooled handle the second time
            let response = try await client.perform(HTTPRequest(url: "\(server.baseURL)/redirect"))
            #expect(response.status == 302 && String(decoding: response.body, as: UTF8.self) == "moved")
        }
    }

    @Test(
        "internal addresses are refused in IPv4, IPv6 and IPv4-in-IPv6 forms; public ones pass; allowed networks open a hole",
        arguments: [
            ("http://127.0.0.1/", false), ("http://127.8.9.10/", false), ("http://10.0.0.1/", false),
            ("http://172.16.5.4/", false), ("http://172.32.0.1/", true), ("http://192.168.1.1/", false),
            ("http://169.254.169.254/latest", false), ("http://100.100.100.200/", false), ("http://0.0.0.0/", false),
            ("http://[::1]/", false), ("http://[::]/", false), ("http://[fe80::1]/", false),
            ("http://[fd00:ec2::254]/", false), ("http://[::ffff:169.254.169.254]/", false),
            ("http://[::ffff:a9fe:a9fe]/", false), ("http://[64:ff9b::a9fe:a9fe]/", false),
            ("http://[2002:a9fe:a9fe::1]/", false), ("http://224.0.0.1/", false), ("http://255.255.255.255/", false),
            ("http://0x7f000001/", false), ("http://2130706433/", false), ("http://localhost:8080/", false),
            ("https://93.184.216.34/hook", true), ("https://[2606:2800:220:1:248:1893:25c8:1946]/", true),
            ("ftp://93.184.216.34/", false), ("http:///nohost", false),
        ])
    func screened(url: String, permitted: Bool) async throws {
        let screen = DestinationScreen()
        let outcome = try? await screen.check(url: url)
        #expect((outcome != nil) == permitted, "\(url)")
        if let outcome {
            // A name is pinned to what was checked; an address needs no pin.
            #expect(outcome.pins.count == (IPNetwork.bytes(outcome.host) == nil ? 1 : 0), "\(outcome)")
        }
    }

    @Test("an allowed network admits exactly itself; a name that resolves to loopback is pinned to what was checked")
    func allowed() async throws {
        let screen = DestinationScreen(allowedNetworks: [try #require(IPNetwork("127.0.0.1/32"))])
        #expect(try await screen.check(url: "http://127.0.0.1:9/x").addresses == ["127.0.0.1"])
        await #expect(throws: DestinationScreen.Refusal.self) { try await screen.check(url: "http://127.0.0.2:9/x") }
        let development = try await DestinationScreen.development.check(url: "http://localhost:9/x")
        #expect(development.pins.first?.hasPrefix("localhost:9:") == true, "\(development.pins)")
        #expect(IPNetwork("10.0.0.0/33") == nil && IPNetwork("nope") == nil && IPNetwork("::1/129") == nil)
    }
}
