package vault

import (
	"errors"
	"net/http"
)

// resetRoutes registers the password reset by e-mail link (ops_reset.go):
// the "Forgot password?" page, the page the link opens, and their JSON
// twins. All are public: the posts pass the portal's
// CrossOriginProtection, and the reset's authority is the link's token.
func (v *Vault) resetRoutes(rt *router) {
	page := func(w http.ResponseWriter, name string, status int, data map[string]any) error {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.WriteHeader(status)
		return portalTemplates.ExecuteTemplate(w, name, data)
	}
	rt.handle("GET /forgot", func(w http.ResponseWriter, r *http.Request, _ *Principal) error {
		return page(w, "forgot.html", http.StatusOK, map[string]any{"Title": "Forgot password"})
	})
	rt.handle("POST /forgot", func(w http.ResponseWriter, r *http.Request, _ *Principal) error {
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBody)
		who := r.PostFormValue("user")
		err := v.RequestReset(r.Context(), clientAddr(r), ResetRequest{User: who})
		var ae *apiError
		if errors.As(err, &ae) {
			setRetryAfter(w, ae.retryAfter)
			return page(w, "forgot.html", ae.status, map[string]any{"Title": "Forgot password", "Error": ae.msg, "User": who})
		}
		if err != nil {
			return err
		}
		return page(w, "forgot.html", http.StatusOK, map[string]any{"Title": "Forgot password", "Done": ResetAnswer})
	})
	rt.handle("GET /reset", func(w http.ResponseWriter, r *http.Request, _ *Principal) error {
		token := r.URL.Query().Get("token")
		data := map[string]any{"Title": "Choose a new password", "Token": token}
		err := v.CheckReset(token)
		var ae *apiError
		if errors.As(err, &ae) {
			data["Error"], data["Gone"] = ae.msg, true
			return page(w, "reset.html", ae.status, data)
		}
		if err != nil {
			return err
		}
		return page(w, "reset.html", http.StatusOK, data)
	})
	rt.handle("POST /reset", func(w http.ResponseWriter, r *http.Request, _ *Principal) error {
		r.Body = http.MaxBytesReader(w, r.Body, maxFormBody)
		token, next := r.PostFormValue("token"), r.PostFormValue("new")
		err := v.ResetPassword(r.Context(), clientAddr(r), token, next)
		var ae *apiError
		if errors.As(err, &ae) {
			return page(w, "reset.html", ae.status, map[string]any{"Title": "Choose a new password", "Token": token,
				"Error": ae.msg, "Gone": ae == errResetGone})
		}
		if err != nil {
			return err
		}
		return page(w, "login.html", http.StatusOK, map[string]any{"Title": "Sign in",
			"Done": "Password changed; every session of this user was signed out. Sign in with the new password."})
	})
	rt.handle("POST "+PortalAPI+"password-reset", func(w http.ResponseWriter, r *http.Request, _ *Principal) error {
		var req ResetRequest
		if err := readJSON(r, &req); err != nil {
			return err
		}
		if err := v.RequestReset(r.Context(), clientAddr(r), req); err != nil {
			return err
		}
		writeJSON(w, map[string]string{"message": ResetAnswer})
		return nil
	})
	rt.handle("POST "+PortalAPI+"password-reset/confirm", func(w http.ResponseWriter, r *http.Request, _ *Principal) error {
		var req struct {
			Token string `json:"token"`
			New   string `json:"new"`
		}
		if err := readJSON(r, &req); err != nil {
			return err
		}
		if err := v.ResetPassword(r.Context(), clientAddr(r), req.Token, req.New); err != nil {
			return err
		}
		writeJSON(w, map[string]bool{"changed": true})
		return nil
	})
}
