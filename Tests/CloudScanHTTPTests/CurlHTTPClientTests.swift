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
