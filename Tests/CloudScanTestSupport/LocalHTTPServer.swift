import Foundation

/// A small HTTP server (Python's http.server) on a free loopback port, for client tests.
/// Routes: `GET /hello` → 200 "hello"; `POST /echo` → 201 echoing the body and `X-Token`;
/// `GET /redirect` → 302 to /hello; `GET /big` → 2 MiB; `GET /slow` → answers after 10 s; `GET /files/NAME` → the file NAME of the
/// directory given at start (404 when absent; 500 when it holds "FAIL"); anything else → 404.
public final class LocalHTTPServer: Sendable {
    public let port: Int
    private let pid: pid_t

    private static let script = #"""
        import http.server, sys, time, threading
        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def reply(self, code, body, extra=()):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "text/plain")
                for k, v in extra: self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)
            def do_GET(self):
                if self.path == "/hello": self.reply(200, b"hello")
                elif self.path == "/redirect": self.reply(302, b"moved", [("Location", "/hello")])
                elif self.path == "/big": self.reply(200, b"x" * (2 << 20))
                elif self.path == "/slow":
                    time.sleep(10); self.reply(200, b"late")
                elif self.path.startswith("/files/") and len(sys.argv) > 2:
                    import os
                    name = os.path.basename(self.path[len("/files/"):])
                    try:
                        body = open(os.path.join(sys.argv[2], name), "rb").read()
                    except OSError:
                        return self.reply(404, b"no file")
                    self.reply(500 if body == b"FAIL" else 200, body)
                else: self.reply(404, b"not found")
            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                self.reply(201, body, [("X-Echo-Token", self.headers.get("X-Token", "")),
                                       ("X-Echo-Method", self.command)])
        s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        open(sys.argv[1], "w").write(str(s.server_address[1]))
        s.serve_forever()
        """#

    /// Starts the server and waits until its port is known.
    public init(serving directory: URL? = nil) throws {
        let portFile = FileManager.default.temporaryDirectory.appendingPathComponent("http-\(UUID().uuidString)")
        let pid = try spawn(["python3", "-c", Self.script, portFile.path] + (directory.map { [$0.path] } ?? []))
        self.pid = pid
        let deadline = Date().addingTimeInterval(10)
        var port: Int?
        while port == nil, Date() < deadline {
            port = (try? String(contentsOf: portFile, encoding: .utf8)).flatMap { Int($0) }
            if port == nil { usleep(20_000) }
        }
        try? FileManager.default.removeItem(at: portFile)
        guard let port else {
            kill(pid, SIGKILL)
            throw POSIXError(.ETIMEDOUT)
        }
        self.port = port
    }

    /// `http://127.0.0.1:PORT`.
    public var baseURL: String { "http://127.0.0.1:\(port)" }

    /// Stops the server.
    public func stop() {
        kill(pid, SIGKILL)
        _ = waitForExit(pid)
    }
}
