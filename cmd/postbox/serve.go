package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"connectrpc.com/grpchealth"

	"github.com/harmony-postbox/postbox/adapters/delivery"
	"github.com/harmony-postbox/postbox/adapters/httpserver"
	"github.com/harmony-postbox/postbox/adapters/projector"
	"github.com/harmony-postbox/postbox/domain"
)

func runServe(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	cfg, err := parseServeConfig(args, stdout, getenv)
	if err != nil {
		return err
	}
	logger := newLogger(cfg, stderr)
	privateDataDir(cfg.DataDir, logger)
	init := initEmbeddedServer
	if cfg.Store != "" {
		init = initESDBServer
	}
	app, cleanup, err := init(ctx, cfg, logger)
	if err != nil {
		return err
	}
	defer cleanup()
	return app.run(ctx)
}

// privateDataDir closes an existing data directory to other users: one
// made before Postbox created its files 0600 may be open to them.
func privateDataDir(dir string, logger *slog.Logger) {
	fi, err := os.Stat(dir)
	if err != nil || !fi.IsDir() || fi.Mode().Perm()&0o077 == 0 {
		return
	}
	if err := os.Chmod(dir, fi.Mode().Perm()&0o700); err != nil {
		logger.Warn("the data directory is open to other users; make it 0700", "dir", dir, "mode", fi.Mode().Perm().String(), "err", err)
		return
	}
	logger.Info("the data directory was open to other users: made it private (0700)", "dir", dir, "was", fi.Mode().Perm().String())
}

// newLogger writes log lines as --log-format and --log-level say.
func newLogger(cfg Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogJSON {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// federationListener and adminListener tell the two listeners apart in
// the injector graph.
type (
	federationListener struct{ *httpserver.Server }
	adminListener      struct{ *httpserver.Server }
)

// server is a running Postbox: its listeners and what they serve.
type server struct {
	cfg        Config
	federation federationListener
	admin      adminListener
	engine     *delivery.Engine
	live       *projector.Live
	identity   *domain.Identity
	health     *grpchealth.StaticChecker
	logger     *slog.Logger
}

func newServer(cfg Config, federation federationListener, admin adminListener, engine *delivery.Engine,
	live *projector.Live, identity *domain.Identity, health *grpchealth.StaticChecker, logger *slog.Logger,
) *server {
	return &server{cfg: cfg, federation: federation, admin: admin, engine: engine,
		live: live, identity: identity, health: health, logger: logger}
}

// run serves until ctx ends, then shuts down gracefully.
func (s *server) run(ctx context.Context) error {
	s.logger.Info("postbox serving", "server_id", s.identity.Current().String(), "version", buildVersion(),
		"federation", s.federation.Addr().String(), "admin", s.admin.Addr().String())
	// The engine runs until the listeners have shut down: it rebuilds the
	// peers' state (their pushes wait for it, and then for their startup
	// pull), tells peers that do not know this server's current ID yet,
	// and pulls every peer federated with before.
	engineCtx, stopEngine := context.WithCancel(context.WithoutCancel(ctx))
	defer stopEngine()
	engineDone := make(chan error, 1)
	go func() { engineDone <- s.engine.Run(engineCtx) }()
	// The projections follow the store until shutdown, then checkpoint.
	liveCtx, stopLive := context.WithCancel(context.WithoutCancel(ctx))
	liveDone := make(chan error, 1)
	go func() { liveDone <- s.live.Run(liveCtx) }()
	errs := make(chan error, 2)
	go func() { errs <- s.federation.Serve() }()
	go func() { errs <- s.admin.Serve() }()
	go func() {
		select {
		case <-s.engine.Ready():
			s.health.SetStatus("", grpchealth.StatusServing)
			s.logger.Info("startup pulls done; serving")
		case <-engineCtx.Done():
		}
	}()
	var first error
	engineEnded := false
	select {
	case <-ctx.Done():
	case first = <-errs:
	case first = <-engineDone:
		engineEnded = true
	}
	s.logger.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err := errors.Join(first, s.federation.Shutdown(shutdownCtx), s.admin.Shutdown(shutdownCtx))
	stopEngine()
	if !engineEnded {
		err = errors.Join(err, <-engineDone)
	}
	stopLive()
	if lerr := <-liveDone; lerr != nil {
		err = errors.Join(err, fmt.Errorf("projections checkpoint: %w", lerr))
	}
	return err
}
