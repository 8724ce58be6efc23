internal import CCurl
import Dispatch
import Foundation

/// An outbound HTTP request (Kubernetes API, storage service, webhooks, artifact downloads).
public struct HTTPRequest: Sendable {
    public var method: String
    public var url: String
    /// Header fields in order; names are sent as given.
    public var headers: [(String, String)]
    public var body: [UInt8]?
    /// Bound on the whole exchange.
    public var timeout: Duration
    /// Bound on connecting.
    public var connectTimeout: Duration
    /// Responses larger than this fail with ``HTTPClientError/Code/responseTooLarge``.
    public var maximumResponseBytes: Int

    public init(
        method: String = "GET", url: String, headers: [(String, String)] = [], body: [UInt8]? = nil,
        timeout: Duration = .seconds(30), connectTimeout: Duration = .seconds(10),
        maximumResponseBytes: Int = 16 << 20
    ) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.timeout = timeout
        self.connectTimeout = connectTimeout
        self.maximumResponseBytes = maximumResponseBytes
    }
}

/// A response: status, header fields (last response of any redirects is not followed) and body.
public struct HTTPResponse: Sendable {
    public var status: Int
    /// Header fields as received, names lowercased.
    public var headers: [(String, String)]
    public var body: [UInt8]

    /// The first value of a header field (case-insensitive name).
    public func header(_ name: String) -> String? {
        let lower = name.lowercased()
        return headers.first { $0.0 == lower }?.1
    }
}

/// TLS settings shared by every request of a client.
public struct HTTPClientConfiguration: Sendable {
    /// A PEM bundle of trusted CAs; nil uses the system store.
    public var caFile: String?
    /// PEM client certificate and key files (mutual TLS).
    public var clientCertificateFile: String?
    public var clientKeyFile: String?
    /// Sent as `User-Agent`.
    public var userAgent: String

    public init(
        caFile: String? = nil, clientCertificateFile: String? = nil, clientKeyFile: String? = nil,
        userAgent: String = "cloudscan/0.1.0"
    ) {
        self.caFile = caFile
        self.clientCertificateFile = clientCertificateFile
        self.clientKeyFile = clientKeyFile
        self.userAgent = userAgent
    }
}

/// An error from the HTTP client; never includes request bodies or header values.
public struct HTTPClientError: Error, CustomStringConvertible, Sendable {
    public struct Code: RawRepresentable, Hashable, Sendable {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public static let timedOut = Code(rawValue: "timedOut")
        public static let connectionFailed = Code(rawValue: "connectionFailed")
        public static let tls = Code(rawValue: "tls")
        public static let responseTooLarge = Code(rawValue: "responseTooLarge")
        public static let other = Code(rawValue: "other")
    }
    public var code: Code
    public var message: String
    public var description: String { "HTTPClientError(code: \(code.rawValue), message: \(message))" }
}

/// HTTP over libcurl's easy interface. Each request runs on a GCD thread, never on the
/// cooperative pool; TLS peer and host verification are always on.
public struct CurlHTTPClient: Sendable {
    public let configuration: HTTPClientConfiguration

    private static let globalInit: Void = { _ = curl_global_init(Int(CURL_GLOBAL_DEFAULT)) }()

    public init(configuration: HTTPClientConfiguration = .init()) {
        _ = Self.globalInit
        self.configuration = configuration
    }

    /// Performs the request.
    public func perform(_ request: HTTPRequest) async throws -> HTTPResponse {
        let configuration = configuration
        return try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async {
                continuation.resume(with: Result { try Self.performBlocking(request, configuration) })
            }
        }
    }

    /// Collects the response while libcurl calls back.
    private final class Sink {
        var body: [UInt8] = []
        var headerLines: [String] = []
        var limit: Int
        var overflowed = false
        init(limit: Int) { self.limit = limit }
    }

    private static func milliseconds(_ duration: Duration) -> Int {
        Int(duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000)
    }

    private static func performBlocking(_ request: HTTPRequest, _ configuration: HTTPClientConfiguration) throws
        -> HTTPResponse
    {
        guard let handle = curl_easy_init() else {
            throw HTTPClientError(code: .other, message: "curl_easy_init failed")
        }
        defer { curl_easy_cleanup(handle) }
        let sink = Sink(limit: request.maximumResponseBytes)
        let sinkPointer = Unmanaged.passUnretained(sink).toOpaque()

        var headerList: UnsafeMutablePointer<curl_slist>?
        defer { curl_slist_free_all(headerList) }
        for (name, value) in request.headers { headerList = curl_slist_append(headerList, "\(name): \(value)") }
        // Never send `Expect: 100-continue` (an extra round trip on every POST).
        headerList = curl_slist_append(headerList, "Expect:")

        func set(_ option: CURLoption, _ value: String) {
            _ = value.withCString { cloudscan_curl_setopt_ptr(handle, option, $0) }
        }
        set(CURLOPT_URL, request.url)
        set(CURLOPT_CUSTOMREQUEST, request.method)
        set(CURLOPT_USERAGENT, configuration.userAgent)
        if let ca = configuration.caFile { set(CURLOPT_CAINFO, ca) }
        if let cert = configuration.clientCertificateFile { set(CURLOPT_SSLCERT, cert) }
        if let key = configuration.clientKeyFile { set(CURLOPT_SSLKEY, key) }
        _ = cloudscan_curl_setopt_long(handle, CURLOPT_NOSIGNAL, 1)
        _ = cloudscan_curl_setopt_long(handle, CURLOPT_SSL_VERIFYPEER, 1)
        _ = cloudscan_curl_setopt_long(handle, CURLOPT_SSL_VERIFYHOST, 2)
        _ = cloudscan_curl_setopt_long(handle, CURLOPT_TIMEOUT_MS, milliseconds(request.timeout))
        _ = cloudscan_curl_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, milliseconds(request.connectTimeout))
        _ = "http,https".withCString { cloudscan_curl_setopt_ptr(handle, CURLOPT_PROTOCOLS_STR, $0) }
        _ = cloudscan_curl_setopt_ptr(handle, CURLOPT_HTTPHEADER, UnsafeRawPointer(headerList))
        if let body = request.body {
            _ = cloudscan_curl_setopt_off(handle, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(body.count))
            _ = body.withUnsafeBytes { cloudscan_curl_setopt_ptr(handle, CURLOPT_COPYPOSTFIELDS, $0.baseAddress) }
        }
        _ = cloudscan_curl_setopt_write(handle) { data, size, count, userdata in
            let sink = Unmanaged<Sink>.fromOpaque(userdata!).takeUnretainedValue()
            let length = size * count
            if sink.body.count + length > sink.limit {
                sink.overflowed = true
                return 0
            }
            sink.body.append(contentsOf: UnsafeRawBufferPointer(start: data, count: length))
            return length
        }
        _ = cloudscan_curl_setopt_ptr(handle, CURLOPT_WRITEDATA, sinkPointer)
        _ = cloudscan_curl_setopt_header(handle) { data, size, count, userdata in
            let sink = Unmanaged<Sink>.fromOpaque(userdata!).takeUnretainedValue()
            let length = size * count
            let line = String(decoding: UnsafeRawBufferPointer(start: data, count: length), as: UTF8.self)
            if line.hasPrefix("HTTP/") { sink.headerLines.removeAll() }  // a new response (e.g. after 100)
            sink.headerLines.append(line)
            return length
        }
        _ = cloudscan_curl_setopt_ptr(handle, CURLOPT_HEADERDATA, sinkPointer)

        let code = curl_easy_perform(handle)
        guard code == CURLE_OK else {
            let message = String(cString: curl_easy_strerror(code))
            switch code {
            case CURLE_WRITE_ERROR where sink.overflowed:
                throw HTTPClientError(
                    code: .responseTooLarge, message: "response exceeds \(request.maximumResponseBytes) bytes")
            case CURLE_OPERATION_TIMEDOUT: throw HTTPClientError(code: .timedOut, message: message)
            case CURLE_COULDNT_CONNECT, CURLE_COULDNT_RESOLVE_HOST:
                throw HTTPClientError(code: .connectionFailed, message: message)
            case CURLE_SSL_CONNECT_ERROR, CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CACERT_BADFILE:
                throw HTTPClientError(code: .tls, message: message)
            default: throw HTTPClientError(code: .other, message: message)
            }
        }
        var status = 0
        _ = cloudscan_curl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        var headers: [(String, String)] = []
        for line in sink.headerLines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespacesAndNewlines)
            headers.append((name, value))
        }
        return HTTPResponse(status: status, headers: headers, body: sink.body)
    }
}
