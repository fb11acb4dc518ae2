from oauth2_provider.oauth2_validators import OAuth2Validator


class Validator(OAuth2Validator):
    oidc_claim_scope = OAuth2Validator.oidc_claim_scope | {
        "preferred_username": "profile"
    }

    def get_additional_claims(self, request):
        return {
            "preferred_username": request.user.username,
            "email": request.user.email,
        }
