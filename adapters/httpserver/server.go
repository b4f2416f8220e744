package httpserver

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// TLSFiles names a certificate and key; both empty means plaintext.
type TLSFiles struct {
	CertFile string
	KeyFile  string
}

// Server is one listener with its http.Server.
type Server struct {
	name     string
	srv      *http.Server
	listener net.Listener
	tls      bool
	logger   *slog.Logger
}

// writeTimeout bounds a request and its reply; the federation listener
// extends it once a slow body has been read whole (rateReader).
const writeTimeout = 60 * time.Second

// MaxConcurrentStreams caps the HTTP/2 streams of one connection (TLS and
// h2c), so one connection cannot open hundreds of calls at once.
const MaxConcurrentStreams = 32

// Listen binds addr now, so the caller knows the port is ours before it
// starts anything that depends on being reachable.
func Listen(ctx context.Context, name, addr string, handler http.Handler, files TLSFiles, logger *slog.Logger) (*Server, error) {
	if (files.CertFile == "") != (files.KeyFile == "") {
		return nil, fmt.Errorf("%s listener: --tls-cert and --tls-key go together", name)
	}
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    64 << 10,
		Protocols:         protocols,
		HTTP2:             &http.HTTP2Config{MaxConcurrentStreams: MaxConcurrentStreams},
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	secure := files.CertFile != ""
	if secure {
		cert, err := tls.LoadX509KeyPair(files.CertFile, files.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%s listener: load TLS key pair: %w", name, err)
		}
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		protocols.SetHTTP2(true)
	} else {
		// hRPC clients and raw tools speak HTTP/1.1, gRPC speaks h2c.
		protocols.SetUnencryptedHTTP2(true)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("%s listener: %w", name, err)
	}
	return &Server{name: name, srv: srv, listener: ln, tls: secure, logger: logger}, nil
}

// Addr is the bound address.
func (s *Server) Addr() net.Addr { return s.listener.Addr() }

// Serve serves until Shutdown; it returns nil after a graceful shutdown.
func (s *Server) Serve() error {
	s.logger.Info("listening", "listener", s.name, "addr", s.Addr().String(), "tls", s.tls)
	var err error
	if s.tls {
		err = s.srv.ServeTLS(s.listener, "", "")
	} else {
		err = s.srv.Serve(s.listener)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("%s listener: %w", s.name, err)
}

// Shutdown stops accepting and waits for calls in flight, up to ctx.
func (s *Server) Shutdown(ctx context.Context) error {
	return s.srv.Shutdown(ctx)
}

// WithoutWriteTimeout lets replies run for as long as they need: for a
// listener serving streams (the admin API's Watch --follow), which a write
// timeout would cut. Call it before Serve.
func (s *Server) WithoutWriteTimeout() *Server {
	s.srv.WriteTimeout = 0
	return s
}
