//! Portcullis gateway library (work in progress).
