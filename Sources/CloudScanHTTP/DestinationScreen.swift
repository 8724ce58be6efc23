#if canImport(Glibc)
    import Glibc
#endif

/// An IP network (`10.0.0.0/8`, `fe80::/10`).
public struct IPNetwork: Sendable, Hashable, CustomStringConvertible {
    /// 4 or 16 bytes.
    public var address: [UInt8]
    public var prefixLength: Int

    /// Parses `ADDRESS/LENGTH` or a bare address (a network of one).
    public init?(_ text: String) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard (1...2).contains(parts.count), let address = IPNetwork.bytes(String(parts[0])) else { return nil }
        let maximum = address.count * 8
        if parts.count == 2 {
            guard parts[1].utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), parts[1].utf8.count <= 3,
                let length = Int(parts[1]), (0...maximum).contains(length)
            else { return nil }
            prefixLength = length
        } else {
            prefixLength = maximum
        }
        self.address = address
    }

    /// The address's bytes (4 for IPv4, 16 for IPv6), or nil when it is not a numeric address.
    public static func bytes(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            return withUnsafeBytes(of: &v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { Array($0) }
        }
        return nil
    }

    public func contains(_ candidate: [UInt8]) -> Bool {
        guard candidate.count == address.count else { return false }
        var remaining = prefixLength
        for index in 0..<address.count where remaining > 0 {
            let bits = min(8, remaining)
            let mask = UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
            if candidate[index] & mask != address[index] & mask { return false }
            remaining -= bits
        }
        return true
    }

    public var description: String { "\(IPNetwork.text(address))/\(prefixLength)" }

    static func text(_ bytes: [UInt8]) -> String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        let family = bytes.count == 4 ? AF_INET : AF_INET6
        let ok = bytes.withUnsafeBytes { inet_ntop(family, $0.baseAddress, &buffer, socklen_t(buffer.count)) != nil }
        guard ok else { return "?" }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// Where a request to a URL someone else chose may go (webhooks). The host is resolved and every
/// address it has must be public: loopback, private, link-local (cloud metadata lives there),
/// shared, multicast, reserved and documentation ranges are refused, in IPv4, IPv6 and IPv4
/// embedded in IPv6 alike, unless a network is allowed explicitly (development). The checked
/// addresses are pinned for the connection (``Checked/pins``), so a DNS answer that changes
/// between the check and the connect (rebinding) changes nothing.
public struct DestinationScreen: Sendable {
    /// Internal networks a deployment allows anyway (`WEBHOOK_ALLOWED_NETWORKS`).
    public var allowedNetworks: [IPNetwork]

    public init(allowedNetworks: [IPNetwork] = []) {
        self.allowedNetworks = allowedNetworks
    }

    /// `cloudscan dev`: loopback receivers are fine on one machine.
    public static let development = DestinationScreen(
        allowedNetworks: [IPNetwork("127.0.0.0/8"), IPNetwork("::1/128")].compactMap { $0 })

    /// Networks no request of a stranger's choosing may reach.
    public static let internalNetworks: [IPNetwork] = [
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
        "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "::/128", "::1/128", "::ffff:0:0:0/96", "64:ff9b:1::/48", "100::/64", "2001::/23", "2001:db8::/32", "fc00::/7",
        "fe80::/10", "fec0::/10",
        "ff00::/8",
    ].compactMap(IPNetwork.init)

    public struct Refusal: Error, Sendable, CustomStringConvertible {
        public var message: String
        public var description: String { message }
    }

    /// A URL that passed: where it resolved, and the pins for ``HTTPRequest/pinnedAddresses``.
    public struct Checked: Sendable {
        public var host: String
        public var port: Int
        public var addresses: [String]
        public var pins: [String]
    }

    /// Whether an address may be reached.
    public func permits(_ address: [UInt8]) -> Bool {
        if allowedNetworks.contains(where: { $0.contains(address) }) { return true }
        if Self.internalNetworks.contains(where: { $0.contains(address) }) { return false }
        if address.count == 16, let embedded = Self.embeddedIPv4(address) { return permits(embedded) }
        return true
    }

    /// IPv4 carried in IPv6: mapped (`::ffff:a.b.c.d`), compatible (`::a.b.c.d`), NAT64
    /// (`64:ff9b::/96`) and 6to4 (`2002:AABB:CCDD::/48`).
    static func embeddedIPv4(_ address: [UInt8]) -> [UInt8]? {
        let prefix = Array(address[0..<12])
        if prefix == [UInt8](repeating: 0, count: 10) + [0xFF, 0xFF] || prefix == [UInt8](repeating: 0, count: 12)
            || prefix == [0x00, 0x64, 0xFF, 0x9B] + [UInt8](repeating: 0, count: 8)
        {
            return Array(address[12..<16])
        }
        if address[0] == 0x20 && address[1] == 0x02 { return Array(address[2..<6]) }
        return nil
    }

    /// Resolves the URL's host (off the cooperative pool) and refuses it when it has no address or
    /// any address is internal.
    public func check(url: String) async throws -> Checked {
        guard let (host, port) = Self.authority(url) else {
            throw Refusal(message: "not an http(s) URL with a host (and no user information)")
        }
        let addresses: [[UInt8]]
        if let literal = IPNetwork.bytes(host) {
            addresses = [literal]
        } else {
            addresses = await Self.resolve(host)
        }
        guard !addresses.isEmpty else { throw Refusal(message: "the host does not resolve") }
        if addresses.contains(where: { !permits($0) }) {
            throw Refusal(message: "the host resolves to an internal address; such destinations are refused")
        }
        let texts = addresses.map(IPNetwork.text)
        let pinned = addresses.map { $0.count == 16 ? "[\(IPNetwork.text($0))]" : IPNetwork.text($0) }
        let pins = IPNetwork.bytes(host) == nil ? ["\(host):\(port):\(pinned.joined(separator: ","))"] : []
        return Checked(host: host, port: port, addresses: texts, pins: pins)
    }

    /// The host (IPv6 without brackets) and port of an http(s) URL, read the way libcurl reads
    /// them: scheme, `//`, authority up to the first `/`, `?` or `#`. User information is refused
    /// (`https://trusted@evil/` reads differently to people and parsers), as is anything but a
    /// plain host: names of letters, digits, `-`, `.` and `_`, or an address.
    static func authority(_ url: String) -> (host: String, port: Int)? {
        let lower = url.prefix(8).lowercased()
        let scheme: String
        if lower.hasPrefix("https://") {
            scheme = "https"
        } else if lower.hasPrefix("http://") {
            scheme = "http"
        } else {
            return nil
        }
        let rest = url.dropFirst(scheme.count + 3)
        let authority = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        guard !authority.isEmpty, !authority.contains("@"), !authority.contains("\\") else { return nil }
        var host: Substring
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { return nil }
                portText = after.dropFirst()
            }
            guard IPNetwork.bytes(String(host))?.count == 16 else { return nil }
        } else {
            let parts = authority.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count <= 2 else { return nil }
            host = parts[0]
            portText = parts.count == 2 ? parts[1] : nil
            // A trailing dot is refused: libcurl may look such a name up past the pin.
            guard !host.isEmpty, !host.hasSuffix("."),
                host.utf8.allSatisfy({
                    ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2D
                        || $0 == 0x2E || $0 == 0x5F
                })
            else { return nil }
        }
        var port = scheme == "https" ? 443 : 80
        if let portText {
            guard !portText.isEmpty, portText.utf8.count <= 5, portText.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
                let value = Int(portText), (1...65535).contains(value)
            else { return nil }
            port = value
        }
        return (String(host), port)
    }

    /// Every address of `host` (getaddrinfo, on a thread of its own), or none.
    static func resolve(_ host: String) async -> [[UInt8]] {
        await withCheckedContinuation { continuation in
            BlockingExecutor.shared.submit {
                var hints = addrinfo()
                hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
                var result: UnsafeMutablePointer<addrinfo>?
                guard getaddrinfo(host, nil, &hints, &result) == 0 else {
                    continuation.resume(returning: [])
                    return
                }
                defer { freeaddrinfo(result) }
                var out: [[UInt8]] = []
                var cursor = result
                while let entry = cursor {
                    if let address = entry.pointee.ai_addr {
                        switch Int32(entry.pointee.ai_family) {
                        case AF_INET:
                            address.withMemoryRebound(to: sockaddr_in.self, capacity: 1) {
                                var value = $0.pointee.sin_addr
                                out.append(withUnsafeBytes(of: &value) { Array($0) })
                            }
                        case AF_INET6:
                            address.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
                                var value = $0.pointee.sin6_addr
                                out.append(withUnsafeBytes(of: &value) { Array($0) })
                            }
                        default: break
                        }
                    }
                    cursor = entry.pointee.ai_next
                }
                var seen = Set<[UInt8]>()
                continuation.resume(returning: out.filter { seen.insert($0).inserted })
            }
        }
    }
}
