"""Configuration with a leaked credential (planted for the secrets scanners)."""
GITHUB_TOKEN = "ghp_4Hq8vTnZ2xLw9Rk7Yb3Pc6Md1Fs5Gj0Ae8Ku"
STRIPE_KEY = "sk_live_51HbQ2kLm9XzR4tV8wY3nP6qS"
